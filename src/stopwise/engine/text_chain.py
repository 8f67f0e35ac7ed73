"""A live chain whose probes are read from its own text (no side request).

Over an upstream that cannot continue a prefix (a chat-only API: hosted reasoning
APIs, Ollama's chat endpoint, vLLM or SGLang with a reasoning parser), a probe
cannot force an answer. What the chain has already written can still be read:
at each cue (a blank line, "Wait", "Hmm", ...), the probe's answer is the last
answer the chain has stated before the cue, exactly as the text-derived probes
of the bundled R1/QwQ traces (:mod:`stopwise.traces.textprobes`). Such probes
cost nothing, have no logprob, and stopping there returns an answer the client
has already been sent.

The handle reads :data:`~stopwise.traces.textprobes.STREAM_LOOKAHEAD` characters
past the token it hands the driver (a cue must be complete before it is final);
:attr:`TextProbeChain.read` counts what it read from upstream.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from stopwise.backends.base import ProbeOutcome, Sampling, TokenStep, UpstreamStreamChain
from stopwise.traces.textprobes import TextProbeScanner

#: the families whose decisions a text-probe chain supports (they read answers the chain stated,
#: a token budget, or per-token signals where the upstream returns logprobs)
TEXT_PROBE_FAMILIES = ("first_candidate", "answer_convergence", "token_budget")
TOKEN_SIGNAL_FAMILIES = ("entropy_monitor", "deepconf_online")


class TextProbeChain(UpstreamStreamChain):
    """One streamed chain with text-derived probes.

    Parameters
    ----------
    backend : stopwise.backends.base.Backend
        Any backend; only :meth:`~stopwise.backends.base.Backend.stream` is used.
    prompt : str
    sampling : Sampling
    """

    probes_free = True  # probes are read from the text: a stop costs no forcing request

    def __init__(self, backend: Any, prompt: str, sampling: Sampling) -> None:
        self.sampling = sampling
        self.steps: list[TokenStep] = []  # handed to the driver
        self._ahead: deque[TokenStep] = deque()  # read, not yet handed
        self.scanner = TextProbeScanner()
        self._iter = backend.stream(prompt, sampling).__aiter__()
        self._done = False
        self.read = 0

    async def _read_one(self) -> bool:
        try:
            st = await self._iter.__anext__()
        except StopAsyncIteration:
            self._done = True
            self.scanner.close()
            self.finish_reason = "length" if self.read >= self.sampling.max_tokens else "stop"
            return False
        self.read += 1
        self._ahead.append(st)
        self.scanner.feed(st.text)
        return True

    async def next(self) -> TokenStep | None:
        if not self._ahead and not self._done:
            await self._read_one()
        if not self._ahead:
            return None
        st = self._ahead.popleft()
        self.steps.append(st)
        # the probe at this position needs the text STREAM_LOOKAHEAD characters past the next token
        while not self._done and not self.scanner.ready(len(self.steps)):
            await self._read_one()
        return st

    def probes_at(self, position: int) -> list[tuple[Any, str | None]]:
        hit = self.scanner.probe_at(position)
        return [] if hit is None else [((position, hit[0]), hit[0])]

    async def probe(self, key: Any) -> ProbeOutcome:
        position, cue = key
        hit = self.scanner.probe_at(position)
        answer = hit[1] if hit is not None else None
        return ProbeOutcome(text=answer, logprob=math.nan, cost=0, cue=cue, answer=answer)

    @property
    def text(self) -> str:
        return self.prefix_text(len(self.steps))

    def prefix_text(self, n: int) -> str:
        n = max(0, min(n, len(self.scanner.ends)))
        return self.scanner.text[: self.scanner.ends[n - 1]] if n else ""
