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
