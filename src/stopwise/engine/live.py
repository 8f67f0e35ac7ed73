"""The live driver: one policy over live backend chains, with the replay driver's semantics.

The policy holds every stopping rule; this driver only carries out its actions
on real chains (:class:`stopwise.backends.base.ChainHandle`) and feeds it the
same events, in the same order, that :mod:`stopwise.replay.reference` feeds it
from logged traces:

Clock
    Lockstep ticks: each tick, every live chain (in chain order) contributes one
    token and the policy receives ``Tokens``. Chains decode concurrently
    upstream; the driver reads one token ahead of what it has delivered (a cue
    word is probed *before* the word, so the driver must know the word) and
    buffers the rest, so the policy sees a chain's tokens in order and a probe's
    answer before the chain's next token, while the chain itself never waits
    for the probe.
Probes
    ``Probe(chain, cues)`` runs each probe available at the chain's current
    position (``handle.probes_at``) whose cue passes ``cues`` and that was not
    run before, as a side request, and delivers ``ProbeResult`` with its answer
    class and cost.
Finishing, decisions, accounting
    As in the reference driver: ``Finished`` after the last token; ``Stop``
    cancels that chain upstream at once; ``Final``/``Abstain``/``Escalate`` cancel
    every live chain; tokens = positions delivered, probe tokens = probe costs,
    latency = max(spawn tick + positions + probe cost) in tokens.
    :attr:`LiveOutcome.generated` also counts what upstream produced beyond the
    delivered positions (read-ahead, tokens produced before a cancel arrived).

Answers are strings live; the policy works on integer classes per question.
:class:`AnswerClasses` assigns them on the fly (math-verify equivalence through
:class:`stopwise.answers.AnswerChecker` when given one, else normalized string
equality); a handle that knows the class (a logged trace) gives it directly.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stopwise.backends.base import ChainHandle, TokenStep
from stopwise.errors import StopwiseError
from stopwise.policies.base import (
    MISSING,
    Abstain,
    Escalate,
    Final,
    Finished,
    Policy,
    Probe,
    ProbeResult,
    Spawn,
    Stop,
    Tokens,
)
from stopwise.policies.base import PolicyError

OpenChain = Callable[[int], Awaitable[ChainHandle]]


class AnswerClasses:
    """Integer classes for one question's answers, assigned as answers arrive.

    Parameters
    ----------
    checker : stopwise.answers.AnswerChecker, optional
        Equivalence (math-verify); without one, normalized string equality.
    """

    def __init__(self, checker: Any = None) -> None:
        self.checker = checker
        self.texts: list[str] = []

    def classify(self, answer: str | None) -> int:
        if answer is None or not str(answer).strip():
            return MISSING
        from stopwise.answers import normalize

        a = str(answer)
        for i, t in enumerate(self.texts):
            if normalize(a) == normalize(t) or (self.checker is not None and self.checker.equivalent(a, t)):
                return i
        self.texts.append(a)
        return len(self.texts) - 1

    def text(self, cls: int) -> str | None:
        return self.texts[cls] if 0 <= cls < len(self.texts) else None


@dataclass
class LiveOutcome:
    """Decision and accounting of one live run (fields as the reference driver's ``UnitOutcome``)."""

    answer: int
    abstained: bool
    escalated: bool
    escalate_to: str | None
    tokens: int
    probe_tokens: int
    latency: int
    chains: int
    generated: int
    returned: dict[int, int] = field(default_factory=dict)
    stopped_early: list[int] = field(default_factory=list)
    handles: list[ChainHandle] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    wall_s: float = 0.0


class LiveDriver:
    """Run one policy over live chains.

    Parameters
    ----------
    open_chain : async callable ``i -> ChainHandle``
        Starts chain ``i`` of the question (the caller fixes prompt, sampling and seed).
    classes : AnswerClasses
    final_answer : callable ``ChainHandle -> str | None``
        The final answer of a finished chain's text (default: :func:`stopwise.answers.extract_answer`).
    max_chains : int
        Most chains the policy may draw (``Spawn`` beyond it is capped, as in replay).
    on_token : callable ``(chain, TokenStep) -> None``, optional
        Called for each token as it is delivered to the policy (streaming).
    """

    def __init__(
        self,
        open_chain: OpenChain,
        classes: AnswerClasses,
        *,
        max_chains: int,
        final_answer: Callable[[ChainHandle], str | None] | None = None,
        family_name: str = "?",
        on_token: Callable[[int, TokenStep], None] | None = None,
    ) -> None:
        self.on_token = on_token
        self.open_chain = open_chain
        self.classes = classes
        self.max_chains = max_chains
        self.final_answer = final_answer or _extract
        self.family = family_name

    async def run(self, policy: Policy) -> LiveOutcome:
        return await _Run(self, policy).run()


def _extract(h: ChainHandle) -> str | None:
    from stopwise.answers import extract_answer

    return extract_answer(h.text)


class _Run:
    def __init__(self, d: LiveDriver, policy: Policy) -> None:
        self.d = d
        self.policy = policy
        self.handles: list[ChainHandle] = []
        self.buf: list[list[TokenStep]] = []  # read, not yet delivered
        self.ended: list[bool] = []  # upstream has no more tokens
        self.read: list[int] = []
        self.pos: list[int] = []
        self.spawn_clock: list[int] = []
        self.charged: list[int] = []
        self.live: list[bool] = []
        self.delivered: list[set] = []
        self.returned: dict[int, int] = {}
        self.stopped: list[int] = []
        self.decision: tuple[str, int, str | None] | None = None
        self.clock = 0
        self.pending: list[Any] = []

    async def run(self) -> LiveOutcome:
        t0 = time.monotonic()
        try:
            await self._handle(self.policy.start())
            while self.decision is None:
                ticking = [c for c, alive in enumerate(self.live) if alive]
                if not ticking:
                    raise PolicyError(
                        f"policy family '{self.d.family}' exhausted its chains ({len(self.pos)} drawn, at most {self.d.max_chains}) without a decision",
                        hint="a policy must answer Final, Abstain or Escalate by the last Finished event",
                    )
                self.clock += 1
                # every ticking chain needs its next token and one more (the cue lookahead)
                await asyncio.gather(*(self._fill(c, 2) for c in ticking))
                for c in ticking:
                    if self.decision is not None:
                        break
                    if not self.live[c]:
                        continue
                    st = self.buf[c].pop(0)
                    self.pos[c] += 1
                    p = self.pos[c]
                    if self.d.on_token is not None:
                        self.d.on_token(c, st)
                    await self._deliver(Tokens(c, p, _f(st.logprob), _f(st.confidence), _f(st.entropy)))
                    if self.decision is None and self.live[c] and not self.buf[c] and self.ended[c]:
                        await self._finish(c)
        finally:
            await asyncio.gather(*(h.cancel() for c, h in enumerate(self.handles) if not self.ended[c]), return_exceptions=True)
        kind, answer, model = self.decision
        latency = max((s + p + q for s, p, q in zip(self.spawn_clock, self.pos, self.charged)), default=0)
        return LiveOutcome(
            answer=int(answer),
            abstained=kind == "abstain",
            escalated=kind == "escalate",
            escalate_to=model,
            tokens=int(sum(self.pos)),
            probe_tokens=int(sum(self.charged)),
            latency=int(latency),
            chains=len(self.pos),
            # a handle that reads ahead of the driver (text-derived probes) knows what it read upstream
            generated=int(sum(max(r, int(getattr(h, "read", 0) or 0)) for r, h in zip(self.read, self.handles))),
            returned=dict(self.returned),
            stopped_early=list(self.stopped),
            handles=list(self.handles),
            positions=list(self.pos),
            wall_s=time.monotonic() - t0,
        )

    async def _fill(self, c: int, n: int) -> None:
        while len(self.buf[c]) < n and not self.ended[c]:
            st = await self.handles[c].next()
            if st is None:
                self.ended[c] = True
            else:
                self.buf[c].append(st)
                self.read[c] += 1

    async def _finish(self, c: int) -> None:
        self.live[c] = False
        h = self.handles[c]
        cls = h.answer_class()
        if cls is None:
            cls = self.d.classes.classify(self.d.final_answer(h))
        await self._deliver(Finished(c, self.pos[c], cls, h.finish_reason))

    async def _deliver(self, event: Any) -> None:
        await self._handle(self.policy.on_event(event))

    def _check(self, action: Any, c: int) -> None:
        if not isinstance(c, int) or c < 0 or c >= len(self.pos):
            raise PolicyError(f"policy family '{self.d.family}' sent {action!r} for chain {c}, which was never drawn")

    async def _handle(self, actions: Sequence[Any] | None) -> None:
        for a in actions or ():
            if self.decision is not None:
                return
            if isinstance(a, Probe):
                self._check(a, a.chain)
                await self._probe(a.chain, a.cues)
            elif isinstance(a, Stop):
                self._check(a, a.chain)
                if self.live[a.chain]:
                    self.live[a.chain] = False
                    self.returned[a.chain] = int(a.answer)
                    self.stopped.append(a.chain)
                    if not self.ended[a.chain]:
                        self.ended[a.chain] = True
                        await self.handles[a.chain].cancel()
            elif isinstance(a, Spawn):
                await self._spawn(int(a.n))
            elif isinstance(a, Final):
                self.decision = ("final", int(a.answer), None)
            elif isinstance(a, Abstain):
                self.decision = ("abstain", MISSING, None)
            elif isinstance(a, Escalate):
                self.decision = ("escalate", MISSING, a.model)
            else:
                raise PolicyError(f"policy family '{self.d.family}' returned {a!r}, which is not an action")

    async def _spawn(self, n: int) -> None:
        n = max(0, min(n, self.d.max_chains - len(self.pos)))
        start = len(self.pos)
        new = await asyncio.gather(*(self.d.open_chain(start + i) for i in range(n)))
        for h in new:
            self.handles.append(h)
            self.buf.append([])
            self.ended.append(False)
            self.read.append(0)
            self.pos.append(0)
            self.spawn_clock.append(self.clock)
            self.charged.append(0)
            self.live.append(True)
            self.delivered.append(set())
        if new:
            await asyncio.gather(*(self._fill(c, 1) for c in range(start, start + n)))
        for c in range(start, start + n):
            if self.decision is None and self.live[c] and not self.buf[c] and self.ended[c]:
                await self._finish(c)

    async def _probe(self, c: int, cues: tuple[str, ...] | None) -> None:
        if not self.live[c]:
            return
        await self._fill(c, 1)  # the lookahead token decides word cues
        h = self.handles[c]
        for key, cue in h.probes_at(self.pos[c]):
            if self.decision is not None or not self.live[c]:
                return
            if key in self.delivered[c] or (cues is not None and cue not in cues):
                continue
            self.delivered[c].add(key)
            out = await h.probe(key)
            cls = out.answer_class
            if cls is None:
                from stopwise.backends.probes import forced_answer

                ans = out.answer if out.answer is not None else (forced_answer(out.text) if out.text is not None else None)
                cls = self.d.classes.classify(ans)
            self.charged[c] += int(out.cost)
            await self._deliver(ProbeResult(c, self.pos[c], cls, _f(out.logprob), int(out.cost), cue))


def _f(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


__all__ = ["AnswerClasses", "LiveDriver", "LiveOutcome", "StopwiseError"]
