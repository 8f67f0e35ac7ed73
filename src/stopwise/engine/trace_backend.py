"""A backend that streams a logged trace set as live chains.

This is the working fake of the live driver (tests, the proxy-overhead
benchmark, and users who want to try the server without a model): each chain
yields its logged tokens with their logprob, confidence and entropy, answers
probes with the logged probes at that position, and reports the logged answer
classes, so the live driver's decisions can be compared with the replay
driver's on the very same events. ``delay`` seconds per token simulate an
upstream's rate.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from stopwise.backends.base import ChainHandle, ProbeOutcome, TokenStep
from stopwise.errors import StopwiseError


class TraceChain(ChainHandle):
    """One logged chain (a row of a trace set's chains table) as a live chain."""

    def __init__(self, row: dict[str, Any], *, delay: float = 0.0) -> None:
        self.row = row
        self.delay = delay
        self.n = int(row.get("n_tokens") or 0)
        self.i = 0
        self.cancelled = False
        self.tokens = row.get("tokens") or None
        self._probes: dict[int, list[tuple[int, str | None]]] = {}
        for j, p in enumerate(row.get("probe_position") or []):
            if p is not None and 1 <= p <= self.n:
                self._probes.setdefault(int(p), []).append((j, (row.get("probe_cue") or [None] * (j + 1))[j]))

    def _at(self, name: str, i: int) -> float:
        v = self.row.get(name)
        if v is None or i >= len(v) or v[i] is None:
            return math.nan
        return float(v[i])

    async def next(self) -> TokenStep | None:
        if self.cancelled or self.i >= self.n:
            self.finish_reason = "cancelled" if self.cancelled else self.row.get("finish_reason")
            return None
        if self.delay:
            await asyncio.sleep(self.delay)
        i = self.i
        self.i += 1
        text = self.tokens[i] if self.tokens is not None and i < len(self.tokens) else ""
        return TokenStep(text=text or "", logprob=self._at("token_logprobs", i), confidence=self._at("token_confidence", i), entropy=self._at("entropy", i))

    def probes_at(self, position: int) -> list[tuple[Any, str | None]]:
        return list(self._probes.get(position, ()))

    async def probe(self, key: Any) -> ProbeOutcome:
        j = int(key)
        col = lambda name: (self.row.get(name) or [None] * (j + 1))[j]  # noqa: E731
        cls = col("probe_class")
        lp = col("probe_logprob")
        return ProbeOutcome(
            text=col("probe_answer"),
            logprob=math.nan if lp is None else float(lp),
            cost=int(col("probe_cost") or 0),
            cue=col("probe_cue"),
            answer_class=-1 if cls is None else int(cls),
        )

    async def cancel(self) -> None:
        self.cancelled = True

    def answer_class(self) -> int | None:
        v = self.row.get("answer_class")
        return -1 if v is None else int(v)

    @property
    def text(self) -> str:
        return self.prefix_text(self.i)

    def prefix_text(self, n: int) -> str:
        if self.tokens is not None:
            return "".join(t or "" for t in self.tokens[:n])
        return self.row.get("text") or ""


def question_chains(ts, question: int) -> list[dict[str, Any]]:  # noqa: ANN001
    """The logged chain rows of question row ``question``, in draw order."""
    off = ts.question_offsets
    return ts.chains.slice(int(off[question]), int(off[question + 1] - off[question])).to_pylist()


def trace_opener(rows: list[dict[str, Any]], *, delay: float = 0.0):
    """An ``open_chain`` for :class:`stopwise.engine.live.LiveDriver` over logged chain rows."""

    async def open_chain(i: int) -> TraceChain:
        return TraceChain(rows[i], delay=delay)

    return open_chain


class TraceStreamBackend:
    """A :class:`stopwise.backends.base.Backend` that streams logged chains at a fixed rate.

    Used as an instrumented upstream (``stopwise serve --backend trace:DIR?rate=R``),
    it replays real model output token by token, through the server's completions
    and chat endpoints alike (the chat endpoint returns the thinking as
    ``reasoning_content``, by the model's profile, as vLLM with a reasoning parser does):

    * the chain streamed for a request is the logged chain of the question the
      prompt asks (the last user message, or a prompt containing the question's
      text), sample ``seed mod n`` of it; a prompt that asks no logged question
      gets a chain picked from the prompt and seed (deterministic);
    * a text-only chain (the R1/QwQ sets) is cut into its tokens with the
      tokenizer its set was counted with (Qwen2.5 BPE, ``tokenize`` extra), so the
      positions a client counts are the set's positions;
    * tokens come every ``1/rate`` seconds (``rate=0``: as fast as possible), and
      ``live_streams`` counts the generations in progress, so a test or a
      benchmark can see that a stopped or abandoned chain stops generating here.
    """

    def __init__(self, path: str, *, rate: float = 100.0) -> None:
        from stopwise.backends.base import Capabilities
        from stopwise.traces.io import read_trace_set

        self.ts = read_trace_set(path)
        cols = ("n_tokens", "tokens", "token_logprobs", "token_confidence", "entropy", "finish_reason", "text")
        self.rows = self.ts.chains.select([c for c in cols if c in self.ts.chains.column_names]).to_pylist()
        off = self.ts.question_offsets
        self.by_question: dict[str, list[int]] = {}
        for q, text in enumerate(self.ts.questions.column("question").to_pylist()):
            if text:
                self.by_question.setdefault(str(text).strip(), list(range(int(off[q]), int(off[q + 1]))))
        self.rate = float(rate)
        model = getattr(self.ts.provenance, "model", None)
        self.name = str(model) if model else f"trace:{self.ts.name}"
        self.capabilities = Capabilities(logprobs=True, top_k=0, prefix_continuation=True)
        self.live_streams = 0
        self.started = 0
        self._tokenizer = None
        if self.rows and self.rows[0].get("tokens") is None and self.rows[0].get("text"):
            self._pieces(self.rows[0])  # load the tokenizer now (seconds), not inside the first request

    def model_info(self) -> dict[str, Any]:
        return {"model": self.name, "backend": f"logged trace set {self.ts.name} streamed at a fixed rate",
                "tokenizer": getattr(self.ts.provenance, "tokenizer", None)}

    def render_chat(self, messages) -> str:  # noqa: ANN001
        from stopwise.backends.base import ChatPrompt

        return ChatPrompt(messages)

    def _pick(self, prompt: str, seed: int | None) -> dict[str, Any]:
        import hashlib

        from stopwise.backends.base import chat_messages

        users = [m for m in chat_messages(prompt) if m.get("role") == "user"]
        asked = str(users[-1].get("content") or "").strip() if users else str(prompt).strip()
        rows = self.by_question.get(asked)
        if rows is None:
            rows = next((r for q, r in self.by_question.items() if q and q in asked), None)
        if rows:
            return self.rows[rows[(seed or 0) % len(rows)]]
        h = int.from_bytes(hashlib.sha256(f"{prompt}|{seed}".encode()).digest()[:8], "little")
        return self.rows[h % len(self.rows)]

    def _pieces(self, row: dict[str, Any]) -> list[str] | None:
        """A text-only chain's token texts, cut where its set's tokenizer cuts it."""
        if row.get("tokens") is not None or not row.get("text"):
            return None
        if "_pieces" not in row:
            if self._tokenizer is None:
                from stopwise.traces.tokenize import RegexTokenizer, Tokenizer

                try:
                    self._tokenizer = Tokenizer.qwen25()
                except StopwiseError:
                    self._tokenizer = RegexTokenizer()  # approximate positions without the tokenize extra
            row["_pieces"] = self._tokenizer.tokenize(row["text"]).pieces(row["text"])
        return row["_pieces"]

    async def stream(self, prompt: str, sampling, *, logprobs: bool = True):  # noqa: ANN001, ANN201
        row = self._pick(prompt, sampling.seed)
        pieces = self._pieces(row)
        if pieces is not None:
            row = {**row, "tokens": pieces, "n_tokens": len(pieces)}
        ch = TraceChain(row, delay=1.0 / self.rate if self.rate > 0 else 0.0)
        self.live_streams += 1
        self.started += 1
        try:
            n = 0
            while n < sampling.max_tokens:
                st = await ch.next()
                if st is None:
                    return
                if pieces is None and not st.text:
                    st.text = " x"  # a set with neither tokens nor text: one visible piece a token
                n += 1
                yield st
                if ch.delay == 0 and n % 64 == 0:
                    await asyncio.sleep(0)  # let other streams and cancellations in
        finally:
            self.live_streams -= 1

    async def sample(self, prompt, sampling, n):  # noqa: ANN001, ANN201
        from stopwise.backends.base import Backend

        return await Backend.sample(self, prompt, sampling, n)  # type: ignore[arg-type]

    async def continue_prefix(self, prompt, prefix, forcing, max_tokens):  # noqa: ANN001, ANN201
        return "0}", 0.0, len(prefix) + 8, 2

    async def open_chain(self, prompt, sampling, schedule, forcing, probe_max_tokens=16):  # noqa: ANN001, ANN201
        from stopwise.backends.base import StreamChainHandle

        return StreamChainHandle(self, prompt, sampling, schedule, forcing, probe_max_tokens)  # type: ignore[arg-type]

    async def aclose(self) -> None:
        return None
