"""Single-chain early-exit families: stop one chain once its probes say it is done.

Each family reads the chain's probes (the answer the model gives when forced to
answer at a position, see :mod:`stopwise.traces.schema`), stops the chain at
some probe and returns that probe's answer class; a chain that never triggers
runs to its end and returns its final answer. Each has a grid fixed in code,
ordered from safe (index 0) to aggressive, an event policy (:meth:`make`) and a
vectorized sweep (:meth:`replay`) that must agree exactly with
:func:`stopwise.replay.reference.run_reference`.

Shared conventions
------------------
Probe schedule
    The ``cues`` setting selects which logged probes the family uses by their
    ``probe_cue`` (``None``: all of them). Probes at position 0 are never used
    (see the reference driver). The schedule is part of ``settings()``.
Probe cost
    Every probe the policy consumes is charged its ``probe_cost``, up to and
    including the one that stops the chain. A chain that never stops pays for
    every probe it consumed: all the selected ones for the families that watch
    the whole chain, none for :class:`TokenBudget` (which probes only once the
    budget is reached). Full compute pays no probe cost.
Answer at a stop
    The class of the probe that triggered it, even when that class is missing
    (-1) for :class:`FirstCandidate` (the forced answer at the cut is what the
    user gets).

Families
--------
TokenBudget        ``token_budget``        stop at the first probe at or after a token budget
FirstCandidate     ``first_candidate``     First Try Matters: stop r probes after the first candidate
AnswerConvergence  ``answer_convergence``  Dynasor-CoT: stop after k equal probe answers in a row
ProbeConfidence    ``probe_confidence``    DEER: stop at the first confident probe answer

References
----------
.. [1] Fu et al., "Efficiently Scaling LLM Reasoning with Certaindex"
   (Dynasor-CoT), arXiv:2412.20993.
.. [2] Yang et al., "Dynamic Early Exit in Reasoning Models" (DEER),
   arXiv:2504.15895.
.. [3] "First Try Matters: Revisiting the Role of Reflection in Reasoning
   Models", arXiv:2510.08308.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from stopwise.errors import ConfigError, TraceSetError
from stopwise.policies.base import (
    MISSING,
    Action,
    Event,
    Family,
    Final,
    Finished,
    Probe,
    ProbeResult,
    ReplayResult,
    Spawn,
    Stop,
    Tokens,
)

__all__ = [
    "AnswerConvergence",
    "FirstCandidate",
    "ProbeArrays",
    "ProbeConfidence",
    "SingleChainFamily",
    "TokenBudget",
    "probe_arrays",
]

# Dynasor-CoT's hesitation words; a probe whose text contains one does not count
# towards convergence. Trace sets record only the extracted probe answer, not
# the probe's generated text, so the filter cannot apply to them and is skipped.
HESITATION_WORDS = ("wait", "hold", "but", "okay", "no", "hmm")


# --- probe arrays -----------------------------------------------------------------
@dataclass(frozen=True)
class ProbeArrays:
    """The probes a family may use, flattened over chains (filtered and in logged order).

    Probes of chain ``j`` are ``[offsets[j]:offsets[j+1]]``. ``cumcost`` is the
    inclusive running probe cost within the chain, ``total_cost`` its sum per
    chain, ``local`` the index of the probe within its chain.
    """

    offsets: np.ndarray
    chain: np.ndarray
    local: np.ndarray
    position: np.ndarray
    klass: np.ndarray
    logprob: np.ndarray
    cost: np.ndarray
    cumcost: np.ndarray
    total_cost: np.ndarray
    cue: np.ndarray  # object: the probe's cue label, None where the set has none

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def first(self, hit: np.ndarray) -> np.ndarray:
        """Flat index of the first ``True`` of ``hit`` in each chain, -1 where none."""
        out = np.full(len(self.offsets) - 1, -1, dtype=np.int64)
        idx = np.flatnonzero(hit)
        if len(idx):
            ch = self.chain[idx]
            lead = np.ones(len(idx), dtype=bool)
            lead[1:] = ch[1:] != ch[:-1]
            out[ch[lead]] = idx[lead]
        return out


def _aligned(ts, name: str, pos_offsets: np.ndarray, fill, dtype) -> np.ndarray:  # noqa: ANN001
    """Values of probe list column ``name`` aligned with ``probe_position`` (nulls -> ``fill``)."""
    n = int(pos_offsets[-1])
    out = np.full(n, fill, dtype=dtype)
    if name not in ts.chains.column_names or not ts.has(name):
        return out
    off, vals = ts.list_column(name)
    vals = np.asarray(vals)
    if vals.dtype == object:
        null = np.array([v is None for v in vals], dtype=bool)
    elif vals.dtype.kind == "f" and np.dtype(dtype).kind in "iu":
        null = np.isnan(vals)
    else:
        null = np.zeros(len(vals), dtype=bool)
    if null.any():
        vals = vals.copy()
        vals[null] = fill
    vals = vals.astype(dtype) if np.dtype(dtype) != object else vals
    if len(off) == len(pos_offsets) and np.array_equal(off, pos_offsets):
        return vals
    # some chains lack this list (null) while they have positions: keep the fill there
    lens, plens = np.diff(off), np.diff(pos_offsets)
    ok = lens == plens
    bad = (~ok) & (lens > 0)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise TraceSetError(
            f"trace set '{ts.name}': chain row {j} has {lens[j]} '{name}' values for {plens[j]} probe positions"
        )
    src = np.repeat(ok, lens)
    dst = np.repeat(ok, plens)
    out[dst] = vals[src]
    return out


def probe_arrays(ts, cues: Iterable[str] | None = None, every: int | None = None) -> ProbeArrays:  # noqa: ANN001
    """Flatten the probes of every chain of ``ts`` that a single-chain family may use.

    Keeps probes with ``1 <= position <= n_tokens`` and, when ``cues`` is given,
    a ``probe_cue`` in ``cues`` and, when ``every`` is given, a position that is a
    multiple of ``every``. Missing classes become -1, missing logprobs
    NaN, missing costs 0.
    """
    n_chains = ts.n_chains
    n_tok = np.asarray(ts.column("n_tokens", fill=0), dtype=np.int64)
    if "probe_position" in ts.chains.column_names and ts.has("probe_position"):
        pos_off, pos = ts.list_column("probe_position")
        pos = np.asarray(pos)
        if pos.dtype.kind == "f":
            pos = np.where(np.isnan(pos), -1, pos)
        pos = pos.astype(np.int64)
    else:
        pos_off, pos = np.zeros(n_chains + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    klass = _aligned(ts, "probe_class", pos_off, MISSING, np.int64)
    logprob = _aligned(ts, "probe_logprob", pos_off, np.nan, np.float64)
    cost = _aligned(ts, "probe_cost", pos_off, 0, np.int64)
    chain = np.repeat(np.arange(n_chains, dtype=np.int64), np.diff(pos_off))
    keep = (pos >= 1) & (pos <= n_tok[chain])
    cue = _aligned(ts, "probe_cue", pos_off, None, object)
    if cues is not None:
        allowed = set(cues)
        keep &= np.fromiter((c in allowed for c in cue), dtype=bool, count=len(cue))
    if every is not None:
        keep &= pos % int(every) == 0
    chain, pos, klass, logprob, cost, cue = chain[keep], pos[keep], klass[keep], logprob[keep], cost[keep], cue[keep]
    counts = np.bincount(chain, minlength=n_chains).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    local = np.arange(len(chain), dtype=np.int64) - offsets[chain]
    csum = np.cumsum(cost)
    before = np.concatenate([[0], csum])[offsets[:-1]]  # cost of all earlier chains' probes
    cumcost = csum - before[chain]
    total = np.concatenate([[0], csum])[offsets[1:]] - before
    return ProbeArrays(offsets, chain, local, pos, klass, logprob, cost, cumcost, total.astype(np.int64), cue)


# --- event policies ------------------------------------------------------------------
class _ChainPolicy:
    """One chain: probe where the rule wants, stop (and decide) when the rule fires."""

    #: probe only at positions that are multiples of this (set by the family; None: anywhere)
    every: int | None = None

    def __init__(self, cues: tuple[str, ...] | None) -> None:
        self.cues = cues

    def wants_probe(self, position: int) -> bool:
        return True

    def fires(self, probe: ProbeResult) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def start(self) -> list[Action]:
        return [Spawn(1)]

    def on_event(self, event: Event) -> list[Action]:
        if isinstance(event, Tokens):
            if self.every is not None and event.position % self.every:
                return []
            return [Probe(event.chain, self.cues)] if self.wants_probe(event.position) else []
        if isinstance(event, ProbeResult):
            if self.cues is not None and event.cue not in self.cues:
                return []  # the driver filters already; a live driver may not
            if self.every is not None and event.position % self.every:
                return []
            if self.fires(event):
                return [Stop(event.chain, event.answer), Final(event.answer)]
            return []
        if isinstance(event, Finished):
            return [Final(event.answer)]
        return []


class TokenBudgetPolicy(_ChainPolicy):
    def __init__(self, budget: int, cues: tuple[str, ...] | None) -> None:
        super().__init__(cues)
        self.budget = int(budget)

    def wants_probe(self, position: int) -> bool:
        return position >= self.budget

    def fires(self, probe: ProbeResult) -> bool:
        return True


class FirstCandidatePolicy(_ChainPolicy):
    def __init__(self, reflections: int, cues: tuple[str, ...] | None) -> None:
        super().__init__(cues)
        self.reflections = int(reflections)
        self.since_first: int | None = None  # probes consumed since the first candidate

    def fires(self, probe: ProbeResult) -> bool:
        if self.since_first is None:
            if probe.answer == MISSING:
                return False
            self.since_first = 0
        else:
            self.since_first += 1
        return self.since_first >= self.reflections


class AnswerConvergencePolicy(_ChainPolicy):
    def __init__(self, agreements: int, cues: tuple[str, ...] | None) -> None:
        super().__init__(cues)
        self.agreements = int(agreements)
        self.last = MISSING
        self.run = 0

    def fires(self, probe: ProbeResult) -> bool:
        # Dynasor-CoT's rule as in the paper: the last k probe answers are equal
        # and none is empty. (The released should_early_exit fires whenever the
        # latest probe lacks a hesitation word; that is a bug, not reproduced.)
        if probe.answer == MISSING:
            self.run = 0
        elif probe.answer == self.last and self.run > 0:
            self.run += 1
        else:
            self.run = 1
        self.last = probe.answer
        return self.run >= self.agreements


class ProbeConfidencePolicy(_ChainPolicy):
    def __init__(self, threshold: float, cues: tuple[str, ...] | None) -> None:
        super().__init__(cues)
        self.threshold = float(threshold)

    def fires(self, probe: ProbeResult) -> bool:
        if probe.answer == MISSING or math.isnan(probe.logprob):
            return False
        return math.exp(float(probe.logprob)) >= self.threshold


# --- families -------------------------------------------------------------------------
class SingleChainFamily(Family):
    """Shared machinery: the ``cues`` setting, probe extraction and the sweep's bookkeeping.

    Subclasses define ``_grid``, :meth:`_policy` (event policy at a knob value)
    and :meth:`_stop` (flat index of the stopping probe of every chain at a knob
    value, -1 where the chain runs to its end).
    """

    kind: ClassVar[str] = "single"
    requires: ClassVar[tuple[str, ...]] = ("probe_position", "probe_class")
    _grid: ClassVar[tuple]
    #: whether a chain that never stops has consumed (and pays for) all its probes
    _pays_all_when_running: ClassVar[bool] = True

    def __init__(self, cues: Iterable[str] | str | None = None, every: int | None = None) -> None:
        if isinstance(cues, str):
            cues = (cues,)
        self.cues: tuple[str, ...] | None = None if cues is None else tuple(sorted(set(cues)))
        if self.cues is not None and not self.cues:
            raise ConfigError(f"policy family '{self.name}': 'cues' is empty", hint="pass None to use every probe")
        if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
            raise ConfigError(f"policy family '{self.name}': 'every' must be a positive number of tokens, got {every!r}",
                              hint="e.g. every=64 with cues=['schedule'] keeps every other probe of a 32-token schedule")
        self.every: int | None = every

    @property
    def grid(self) -> np.ndarray:
        return np.asarray(self._grid)

    def settings(self) -> dict:
        out: dict = {"cues": None if self.cues is None else list(self.cues)}
        if self.every is not None:
            out["every"] = self.every
        return out

    def __repr__(self) -> str:
        every = "" if self.every is None else f", every={self.every}"
        return f"{type(self).__name__}(cues={self.cues!r}{every})"

    def make(self, index: int, n_chains: int = 1):  # noqa: ANN201 - returns a Policy
        grid = self.grid
        if not 0 <= index < len(grid):
            raise ConfigError(f"grid index {index} out of range 0..{len(grid) - 1} for family '{self.name}'")
        policy = self._policy(grid[index].item())
        policy.every = self.every
        return policy

    def _policy(self, value):  # noqa: ANN001, ANN202
        raise NotImplementedError

    def _stop(self, pa: ProbeArrays, value, prep=None) -> np.ndarray:  # noqa: ANN001
        raise NotImplementedError

    def _prepare(self, ts, pa: ProbeArrays):  # noqa: ANN001, ANN202
        """Per-set work shared by every grid point of the sweep (passed to :meth:`_stop` as ``prep``)."""
        return None

    def _charge_at_stop(self, pa: ProbeArrays, s: np.ndarray) -> np.ndarray:
        """Probe cost paid by chains stopping at flat probe ``s``: every probe up to it, by default."""
        return pa.cumcost[s]

    def replay(self, ts) -> ReplayResult:  # noqa: ANN001
        pa = probe_arrays(ts, self.cues, self.every)
        final = np.asarray(ts.column("answer_class", fill=MISSING), dtype=np.int64)
        n_tok = np.asarray(ts.column("n_tokens", fill=0), dtype=np.int64)
        running_cost = pa.total_cost if self._pays_all_when_running else np.zeros_like(pa.total_cost)
        grid = self.grid
        n, g = ts.n_chains, len(grid)
        answer = np.empty((n, g), dtype=np.int32)
        tokens = np.empty((n, g), dtype=np.int64)
        probe_tokens = np.empty((n, g), dtype=np.int64)
        prep = self._prepare(ts, pa)
        for k, value in enumerate(grid.tolist()):
            s = self._stop(pa, value, prep)
            stopped = s >= 0
            si = np.where(stopped, s, 0)
            if len(pa.klass):
                answer[:, k] = np.where(stopped, pa.klass[si], final)
                tokens[:, k] = np.where(stopped, pa.position[si], n_tok)
                probe_tokens[:, k] = np.where(stopped, self._charge_at_stop(pa, si), running_cost)
            else:
                answer[:, k] = final
                tokens[:, k] = n_tok
                probe_tokens[:, k] = running_cost
        a_full, t_full, p_full, l_full, c_full = self.full(ts)
        question = np.asarray(ts.question_index, dtype=np.int64)
        ref = np.asarray(ts.questions.column("reference_class").to_numpy(zero_copy_only=False), dtype=np.int32)
        return ReplayResult(
            family=self.name,
            grid=grid,
            unit="chain",
            unit_question=question,
            answer=answer,
            abstained=np.zeros((n, g), dtype=bool),
            tokens=tokens,
            probe_tokens=probe_tokens,
            latency=tokens + probe_tokens,
            chains=np.ones((n, g), dtype=np.int32),
            answer_full=a_full,
            tokens_full=t_full,
            probe_tokens_full=p_full,
            latency_full=l_full,
            chains_full=c_full,
            correct_class=ref[question] if n else np.zeros(0, np.int32),
            notes=[f"probe cues: {'all' if self.cues is None else ', '.join(self.cues)}"
                   + ("" if self.every is None else f"; every {self.every} tokens")],
        )


class TokenBudget(SingleChainFamily):
    """Stop at the first probe at or after a token budget ``B``; return that probe's answer.

    The baseline without a stopping signal (budget forcing): the policy probes
    only once the chain has ``B`` tokens, so a chain shorter than the budget
    runs to its end and pays no probe. Grid: budgets from 32768 down to 64.
    """

    name: ClassVar[str] = "token_budget"
    knob: ClassVar[str] = "budget"
    _grid: ClassVar[tuple] = (
        32768, 24576, 16384, 12288, 8192, 6144, 4096, 3072, 2048, 1536,
        1024, 768, 512, 384, 256, 192, 128, 96, 64,
    )  # fmt: skip
    _pays_all_when_running: ClassVar[bool] = False

    def _policy(self, value):  # noqa: ANN001, ANN202
        return TokenBudgetPolicy(value, self.cues)

    def _stop(self, pa: ProbeArrays, value, prep=None) -> np.ndarray:  # noqa: ANN001
        return pa.first(pa.position >= value)

    def _charge_at_stop(self, pa: ProbeArrays, s: np.ndarray) -> np.ndarray:
        return pa.cost[s]  # the budget policy consumes only the probe it stops at


class FirstCandidate(SingleChainFamily):
    """First Try Matters: allow ``r`` more probes after the first one with an answer, then stop.

    Stops at the ``r``-th probe after the first probe whose answer is not
    missing and returns that probe's answer (``r = 0``: stop at the first
    candidate). Grid: r = 8, 6, 4, 3, 2, 1, 0.
    """

    name: ClassVar[str] = "first_candidate"
    knob: ClassVar[str] = "reflections"
    _grid: ClassVar[tuple] = (8, 6, 4, 3, 2, 1, 0)

    def _policy(self, value):  # noqa: ANN001, ANN202
        return FirstCandidatePolicy(value, self.cues)

    def _stop(self, pa: ProbeArrays, value, prep=None) -> np.ndarray:  # noqa: ANN001
        first = pa.first(pa.klass != MISSING)
        target = first + int(value)
        ok = (first >= 0) & (target < pa.offsets[1:])
        return np.where(ok, target, -1)


class AnswerConvergence(SingleChainFamily):
    """Dynasor-CoT: stop once ``k`` consecutive probe answers are in one class, none missing.

    This is the paper's rule, not the released code's (whose
    ``should_early_exit`` fires whenever the latest probe lacks a hesitation
    word). The paper also discards probes containing a hesitation word (wait,
    hold, but, okay, no, hmm); trace sets store the extracted probe answer, not
    the probe's text, so that filter is not applied. Grid: k = 10, 8, 6, 5, 4, 3, 2.
    """

    name: ClassVar[str] = "answer_convergence"
    knob: ClassVar[str] = "agreements"
    _grid: ClassVar[tuple] = (10, 8, 6, 5, 4, 3, 2)

    def _policy(self, value):  # noqa: ANN001, ANN202
        return AnswerConvergencePolicy(value, self.cues)

    @staticmethod
    def run_lengths(pa: ProbeArrays) -> np.ndarray:
        """Length of the run of equal, non-missing answers ending at each probe (0 at a missing one)."""
        n = len(pa.klass)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        idx = np.arange(n, dtype=np.int64)
        brk = np.ones(n, dtype=bool)
        brk[1:] = (pa.chain[1:] != pa.chain[:-1]) | (pa.klass[1:] != pa.klass[:-1]) | (pa.klass[:-1] == MISSING)
        start = np.maximum.accumulate(np.where(brk, idx, 0))
        run = idx - start + 1
        run[pa.klass == MISSING] = 0
        return run

    def _stop(self, pa: ProbeArrays, value, prep=None) -> np.ndarray:  # noqa: ANN001
        return pa.first(self.run_lengths(pa) >= int(value))


class ProbeConfidence(SingleChainFamily):
    """DEER: stop at the first probe with an answer whose probability ``exp(probe_logprob)`` reaches a threshold.

    Needs ``probe_logprob`` (not NaN): sets imported from text have none.
    Grid: thresholds 0.999 down to 0.5.
    """

    name: ClassVar[str] = "probe_confidence"
    knob: ClassVar[str] = "threshold"
    requires: ClassVar[tuple[str, ...]] = ("probe_position", "probe_class", "probe_logprob")
    _grid: ClassVar[tuple] = (0.999, 0.995, 0.99, 0.98, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)

    def supports(self, ts) -> str | None:  # noqa: ANN001
        reason = super().supports(ts)
        if reason is not None:
            return reason
        _, lp = ts.list_column("probe_logprob")
        lp = np.asarray(lp, dtype=np.float64) if len(lp) else np.zeros(0)
        if not np.isfinite(lp).any() and not (lp == -np.inf).any():
            return "needs probe_logprob, which is NaN for every probe (text-derived probes have no probability)"
        return None

    def _policy(self, value):  # noqa: ANN001, ANN202
        return ProbeConfidencePolicy(value, self.cues)

    def _stop(self, pa: ProbeArrays, value, prep=None) -> np.ndarray:  # noqa: ANN001
        with np.errstate(invalid="ignore"):
            hit = (pa.klass != MISSING) & (np.exp(pa.logprob) >= float(value))
        return pa.first(hit)
