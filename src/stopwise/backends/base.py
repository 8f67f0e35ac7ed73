"""The backend protocol: what stopwise needs from a model server.

A backend streams the tokens of one chain with logprobs, samples several chains
of one prompt, continues a given prefix (probes and answer forcing) and cancels.
Everything is async; closing the async iterator returned by :meth:`Backend.stream`
cancels that chain upstream (the backend must stop generating, not merely stop
reading).

Each backend declares :class:`Capabilities`; callers check them instead of
catching errors. Provider errors are mapped to :class:`stopwise.errors.BackendError`
(``retryable`` and ``hint``) at the boundary.

Logprob convention: every backend reports raw log-softmax values at temperature 1,
whatever the sampling temperature, where it can (the embedded backend computes them
from the logits; an HTTP server reports what it reports, which the trace set's
provenance records).
"""

from __future__ import annotations

import dataclasses

import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

LOGPROB_CONVENTION = "raw log-softmax at temperature 1 (independent of the sampling temperature)"


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do.

    Attributes
    ----------
    logprobs : bool
        Reports the chosen token's logprob.
    top_k : int
        How many top logprobs per position it can report (0: none).
    entropy : bool
        Reports full-vocabulary entropy and DeepConf token confidence (top-20 mean).
    prefix_continuation : bool
        Can continue an exact token prefix (probes, forcing) without re-tokenizing.
    batched_chains : bool
        Decodes several chains in one forward pass (shared prompt cache).
    hidden_states : bool
        Can return hidden-state vectors.
    token_ids : bool
        Reports token ids (not only strings).
    """

    logprobs: bool = True
    top_k: int = 0
    entropy: bool = False
    prefix_continuation: bool = False
    batched_chains: bool = False
    hidden_states: bool = False
    token_ids: bool = False


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one chain. ``temperature == 0`` is greedy.

    ``top_k == 0`` disables the top-k cut. ``seed`` makes a chain reproducible on
    backends that honour it (the embedded backend always does), on one machine and
    one llama.cpp build: another CPU or build rounds the logits differently, and so
    does another batch composition, so a seeded chain is not the same text elsewhere.

    ``ignore_eos`` never samples an end-of-generation token: the chain runs to
    ``max_tokens`` (or a stop string). It is vLLM's and llama.cpp server's
    ``ignore_eos`` extension; tests use it to force a length instead of hoping a
    seed gives one, and benchmarks to fix the decode length.
    """

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    max_tokens: int = 384
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def as_dict(self) -> dict[str, Any]:
        d = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "stop": list(self.stop),
        }
        if self.ignore_eos:  # only when set: older provenance records stay equal
            d["ignore_eos"] = True
        return d


@dataclass
class TokenStep:
    """One generated position of a chain.

    ``logprob`` is the chosen token's raw logprob (NaN if unknown); ``top_*`` are
    descending; ``entropy`` (nats) and ``confidence`` (DeepConf C_i = -mean of the
    top-20 logprobs) are NaN when the backend cannot compute them.
    """

    text: str
    token_id: int | None = None
    logprob: float = math.nan
    top_tokens: list[str] = field(default_factory=list)
    top_logprobs: list[float] = field(default_factory=list)
    entropy: float = math.nan
    confidence: float = math.nan
    raw: bytes | None = None


@dataclass
class ProbeResult:
    """What the model answers when forced to answer at a position of a chain.

    Attributes
    ----------
    position : int
        Tokens of the chain generated when the probe was taken.
    text : str
        The greedy continuation after the forcing string.
    logprob : float
        Sum of the logprobs of the continuation's tokens up to the answer's end.
    prefill_tokens, decode_tokens : int
        What the probe cost.
    cue : str
        What triggered it (``schedule``, ``blank_line``, ``wait``, ...).
    """

    position: int
    text: str
    logprob: float
    prefill_tokens: int
    decode_tokens: int
    cue: str = "request"

    @property
    def cost(self) -> int:
        return self.prefill_tokens + self.decode_tokens


@dataclass
class ChainResult:
    """A finished chain: its steps, finish reason and probes."""

    steps: list[TokenStep]
    finish_reason: str
    probes: list[ProbeResult] = field(default_factory=list)
    seed: int | None = None  # the seed that reproduces this chain alone (None: unseeded, or one of an n-request)

    @property
    def text(self) -> str:
        raw = [s.raw for s in self.steps]
        if raw and all(r is not None for r in raw):
            return b"".join(raw).decode("utf-8", errors="replace")  # type: ignore[arg-type]
        return "".join(s.text for s in self.steps)


@dataclass
class ProbeOutcome:
    """A probe's answer as a chain handle returns it: the forced text, and the class if known.

    ``answer`` is the answer itself where the handle has it (a text-derived probe reads
    a stated answer); otherwise the driver reads it from the forced ``text``.
    """

    text: str | None
    logprob: float
    cost: int
    cue: str | None
    answer_class: int | None = None
    answer: str | None = None


class ChainHandle(ABC):
    """One live chain, driven one token at a time (the live driver's view of a chain).

    ``next()`` returns the chain's next :class:`TokenStep` or None when it has
    ended (``finish_reason`` is then set); ``probe(position, cue)`` asks the model
    to answer after the chain's first ``position`` tokens (a side request: the
    chain is not disturbed); ``cancel()`` stops the chain upstream now.
    """

    finish_reason: str | None = None
    #: probes are read from the chain's own text (no side request, no cost); a stop returns a stated answer
    probes_free: bool = False

    @abstractmethod
    async def next(self) -> TokenStep | None:
        """The next token, or None at the end of the chain."""

    @abstractmethod
    def probes_at(self, position: int) -> list[tuple[Any, str | None]]:
        """Probes available after ``position`` tokens: ``(key, cue)`` pairs, in order.

        Needs token ``position + 1`` to have been read, where the chain has one
        (a cue word is probed *before* the word).
        """

    @abstractmethod
    async def probe(self, key: Any) -> ProbeOutcome:
        """Run (or look up) the probe ``key`` returned by :meth:`probes_at`."""

    @abstractmethod
    async def cancel(self) -> None:
        """Stop generating upstream; idempotent."""

    def answer_class(self) -> int | None:
        """The final answer's class where the backend knows it (logged traces); None: classify the text."""
        return None

    @property
    @abstractmethod
    def text(self) -> str:
        """The text generated (read) so far."""

    def prefix_text(self, n: int) -> str:
        """The text of the chain's first ``n`` tokens."""
        steps = getattr(self, "steps", [])[:n]
        raw = [s.raw for s in steps]
        if raw and all(r is not None for r in raw):
            return b"".join(raw).decode("utf-8", errors="replace")  # type: ignore[arg-type]
        return "".join(s.text for s in steps)


class _StepTexts(Sequence[str]):
    """The token texts of a list of steps, as a read-only view (no copy per look-up)."""

    def __init__(self, steps: list[TokenStep]) -> None:
        self.steps = steps

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i):  # noqa: ANN001, ANN204
        return self.steps[i].text


class ScheduledChainHandle(ChainHandle):
    """A chain that keeps its steps and takes probes where its :class:`ProbeSchedule` says
    (``schedule``, ``steps`` and ``_done`` are set by the subclass)."""

    schedule: Any
    steps: list[TokenStep]
    _done: bool

    def probes_at(self, position: int) -> list[tuple[Any, str | None]]:
        finished = self._done and position >= len(self.steps)
        return [((position, cue), cue) for cue in self.schedule.at(_StepTexts(self.steps), position, finished)]


class UpstreamStreamChain(ChainHandle):
    """A chain read from a backend's stream (``_iter``); ``cancel`` closes it, which stops it upstream."""

    _iter: Any
    _done: bool

    async def cancel(self) -> None:
        if not self._done:
            self._done = True
            self.finish_reason = "cancelled"
            await self._iter.aclose()


class StreamChainHandle(ScheduledChainHandle, UpstreamStreamChain):
    """A :class:`ChainHandle` over any backend: tokens from :meth:`Backend.stream`,
    probes through :meth:`Backend.continue_prefix` on the prefix text."""

    def __init__(self, backend: Backend, prompt: str, sampling: Sampling, schedule: Any, forcing: str, probe_max_tokens: int = 16) -> None:
        self.backend = backend
        self.prompt = prompt
        self.sampling = sampling
        self.schedule = schedule
        self.forcing = forcing
        self.probe_max_tokens = probe_max_tokens
        self.steps: list[TokenStep] = []
        self._iter = backend.stream(prompt, sampling).__aiter__()
        self._done = False

    async def next(self) -> TokenStep | None:
        if self._done:
            return None
        try:
            st = await self._iter.__anext__()
        except StopAsyncIteration:
            self._done = True
            self.finish_reason = "length" if len(self.steps) >= self.sampling.max_tokens else "stop"
            return None
        self.steps.append(st)
        return st

    async def probe(self, key: Any) -> ProbeOutcome:
        position, cue = key
        text, lp, prefill, dec = await self.backend.continue_prefix(self.prompt, self.steps[:position], self.forcing, self.probe_max_tokens)
        return ProbeOutcome(text, lp, prefill + dec, cue)

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.steps)


class ChatPrompt(str):
    """A chat request's messages where the backend protocol carries a prompt string.

    Chat-only upstreams apply their own template, so the "prompt" they are given is
    the message list; its string value is the messages as canonical JSON (for
    logging, hashing and provenance). :func:`chat_messages` reads it back.
    """

    messages: list[dict[str, Any]]

    def __new__(cls, messages: Sequence[dict[str, Any]]) -> "ChatPrompt":
        import json

        msgs = [dict(m) for m in messages]
        obj = super().__new__(cls, json.dumps(msgs, sort_keys=True, ensure_ascii=False))
        obj.messages = msgs
        return obj


def chat_messages(prompt: str) -> list[dict[str, Any]]:
    """The messages of a :class:`ChatPrompt` (or its JSON); a plain prompt becomes one user message."""
    if isinstance(prompt, ChatPrompt):
        return prompt.messages
    if prompt.startswith("[{"):
        import json

        try:
            msgs = json.loads(prompt)
            if isinstance(msgs, list) and all(isinstance(m, dict) and "role" in m for m in msgs):
                return msgs
        except ValueError:
            pass
    return [{"role": "user", "content": prompt}]


class Backend(ABC):
    """A model server stopwise can drive.

    Implementations: :class:`stopwise.backends.llamacpp.EmbeddedBackend`
    (in-process llama.cpp), :class:`stopwise.backends.openai_compat.OpenAICompatBackend`
    (any OpenAI-compatible HTTP server) and :class:`stopwise.backends.replay.TraceBackend`
    (streams a logged trace set; the fake used by tests).
    """

    name: str = "backend"
    capabilities: Capabilities = Capabilities()

    def model_info(self) -> dict[str, Any]:
        """What is known of the model (name, sha256, tokenizer, chat template), for provenance."""
        return {"model": self.name}

    @abstractmethod
    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """Apply the model's chat template client-side; returns the raw prompt text."""

    @abstractmethod
    def stream(self, prompt: str, sampling: Sampling, *, logprobs: bool = True) -> AsyncIterator[TokenStep]:
        """Stream one chain's tokens from a raw prompt.

        Closing the iterator (``aclose``, or leaving an ``async for`` early) cancels
        the chain upstream. ``logprobs=False`` says the caller does not need them
        (a backend may then skip asking for them). Raises :class:`stopwise.errors.BackendError`.
        """

    async def sample(self, prompt: str, sampling: Sampling, n: int) -> list[ChainResult]:
        """Sample ``n`` chains of one prompt (seeds ``seed, seed+1, ...``) to completion.

        The default runs ``n`` streams concurrently; batched backends share the prompt.
        """
        import asyncio

        async def one(i: int) -> ChainResult:
            s = sampling if sampling.seed is None else dataclasses.replace(sampling, seed=sampling.seed + i)
            steps = [st async for st in self.stream(prompt, s)]
            return ChainResult(steps, "length" if len(steps) >= s.max_tokens else "stop", seed=s.seed)

        return list(await asyncio.gather(*(one(i) for i in range(n))))

    @abstractmethod
    async def continue_prefix(
        self, prompt: str, prefix: Sequence[TokenStep], forcing: str, max_tokens: int
    ) -> tuple[str, float, int, int]:
        """Greedily continue ``prompt + prefix + forcing`` for at most ``max_tokens``.

        Used by probes and answer forcing. Returns ``(text, sum_logprob,
        prefill_tokens, decode_tokens)``. Backends with token ids continue the exact
        token prefix; others send the prefix text. Idempotent: safe to retry.
        """

    def count_prompt_tokens(self, prompt: str) -> int | None:
        """Tokens of ``prompt`` where the backend knows its tokenizer (None otherwise)."""
        return None

    async def open_chain(self, prompt: str, sampling: Sampling, schedule: Any, forcing: str, probe_max_tokens: int = 16) -> ChainHandle:
        """Start one chain for the live driver (default: a stream plus prefix-continuation probes)."""
        return StreamChainHandle(self, prompt, sampling, schedule, forcing, probe_max_tokens)

    async def aclose(self) -> None:
        """Release the backend's resources."""
