"""Multi-chain families: how many chains to draw, which to stop, which answer to return.

Each family treats one question as a unit: it draws chains in ``sample_id``
order (never more than were logged for the question), watches them and
returns one answer class. Each has a grid fixed in code, ordered from safe
(index 0) to aggressive, an event policy (:meth:`~MultiChainFamily.make`) and a
vectorized sweep (:meth:`~MultiChainFamily.replay`) over padded
``(questions, chains)`` arrays that must agree exactly with
:func:`stopwise.replay.reference.run_reference`; the test suite checks it.

Shared conventions
------------------
Votes
    :mod:`stopwise.policies.voting`: most votes (or largest weight sum) wins,
    ties go to the class whose first vote came from the earliest chain, missing
    answers (-1) never vote, no vote at all gives -1 (``Final(-1)``).
Time
    The replay clock of :mod:`stopwise.replay.reference`: chains spawned
    together advance one token per tick; a chain spawned in reaction to a
    ``Finished`` event starts on the next tick. None of these families probes,
    so ``probe_tokens`` is always 0.
Full compute (``full``)
    The self-consistency baseline, the same for every family so that savings
    compare on equal terms: every logged chain of the question drawn at once
    and run to its end; tokens are their sum, latency the longest chain. The
    answer is the plain vote over all chains, except for
    :class:`DeepConfOnline`, whose full answer is its own confidence-weighted
    vote over all chains. Sequential samplers (:class:`AdaptiveConsistency`,
    :class:`ESC`) may therefore show a latency above full compute.
Questions without chains
    Every policy decides at ``start`` (``Final(-1)``, or ``Abstain`` for
    :class:`VoteMarginAbstain` with a positive margin).

Families
--------
MajorityVote        ``majority_vote``        fixed-n self-consistency
AdaptiveConsistency ``adaptive_consistency`` one chain at a time until the Beta posterior is sure
ESC                 ``esc``                  windows of w chains until one window agrees
FirstFinish         ``first_finish``         n chains in parallel, the first to finish answers
DeepConfOnline      ``deepconf_online``      warm-up threshold, kill chains whose window confidence drops
                                             (in :mod:`stopwise.policies.deepconf`)
VoteMarginAbstain   ``vote_margin_abstain``  vote over all chains, abstain on a thin margin

References
----------
.. [1] Wang et al., "Self-Consistency Improves Chain of Thought Reasoning in
   Language Models", arXiv:2203.11171.
.. [2] Aggarwal et al., "Let's Sample Step by Step: Adaptive-Consistency for
   Efficient Reasoning and Coding with LLMs", arXiv:2305.11860.
.. [3] Li et al., "Escape Sky-high Cost: Early-stopping Self-Consistency for
   Multi-step Reasoning" (ESC), ICLR 2024.
.. [4] Agarwal et al., "First Finish Search: Efficient Test-Time Scaling in
   Large Language Models", arXiv:2505.18149.
.. [5] Fu et al., "Deep Think with Confidence" (DeepConf), arXiv:2508.15260.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np
from scipy import special

from stopwise.errors import ConfigError
from stopwise.policies.base import (
    MISSING,
    Abstain,
    Action,
    Event,
    Family,
    Final,
    Finished,
    ReplayResult,
    Spawn,
)
from stopwise.policies.voting import PrefixVotes, tally, vote, vote_prefixes

__all__ = [
    "ESC",
    "AdaptiveConsistency",
    "ChainMatrix",
    "FirstFinish",
    "MajorityVote",
    "MultiChainFamily",
    "VoteMarginAbstain",
    "ac_stop_probability",
    "chain_matrix",
    "percentile_rows",
]


# --- shared arrays -------------------------------------------------------------------
@dataclass(frozen=True)
class ChainMatrix:
    """Per-question chain data padded to ``(Q, M)``, ``M`` = most chains of any question.

    Attributes
    ----------
    counts : (Q,) int64    chains logged per question
    klass : (Q, M) int64   final answer class in draw order, -1 for missing and padding
    n_tokens : (Q, M) int64   chain lengths, 0 for padding
    row, col : (n_chains,) int64   position of each chain row of the trace set
    """

    counts: np.ndarray
    klass: np.ndarray
    n_tokens: np.ndarray
    row: np.ndarray
    col: np.ndarray

    @property
    def width(self) -> int:
        return self.klass.shape[1]

    @cached_property
    def cum_tokens(self) -> np.ndarray:
        """``cum_tokens[q, m]``: tokens of the first ``m + 1`` chains."""
        return np.cumsum(self.n_tokens, axis=1)

    @cached_property
    def run_max(self) -> np.ndarray:
        """``run_max[q, m]``: longest of the first ``m + 1`` chains."""
        if self.width == 0:
            return self.n_tokens.copy()
        return np.maximum.accumulate(self.n_tokens, axis=1)

    @cached_property
    def votes(self) -> PrefixVotes:
        """Unweighted votes over every prefix of every question's chains."""
        return vote_prefixes(self.klass)

    def at(self, matrix: np.ndarray, m: np.ndarray, empty=0) -> np.ndarray:  # noqa: ANN001
        """``matrix[q, m[q] - 1]`` per question (the value after ``m[q]`` chains), ``empty`` where ``m[q] == 0``."""
        m = np.asarray(m, dtype=np.int64)
        if self.width == 0:
            return np.full(len(m), empty, dtype=matrix.dtype)
        q = np.arange(len(m))
        out = matrix[q, np.maximum(m - 1, 0)]
        return np.where(m > 0, out, empty)


def chain_matrix(ts) -> ChainMatrix:  # noqa: ANN001
    """Pad the final answers and lengths of ``ts`` into :class:`ChainMatrix` form."""
    counts = np.asarray(ts.chain_counts, dtype=np.int64)
    offsets = np.asarray(ts.question_offsets, dtype=np.int64)
    q = len(counts)
    width = int(counts.max()) if q else 0
    row = np.asarray(ts.question_index, dtype=np.int64)
    col = np.arange(ts.n_chains, dtype=np.int64) - offsets[row]
    klass = np.full((q, width), MISSING, dtype=np.int64)
    n_tok = np.zeros((q, width), dtype=np.int64)
    if ts.n_chains:
        klass[row, col] = np.asarray(ts.column("answer_class", fill=MISSING), dtype=np.int64)
        n_tok[row, col] = np.asarray(ts.column("n_tokens", fill=0), dtype=np.int64)
    return ChainMatrix(counts, klass, n_tok, row, col)


def ac_stop_probability(a, b):  # noqa: ANN001, ANN201 - scalar or array in, same out
    """Adaptive-Consistency's Beta-posterior stopping probability.

    ``P(p > 1/2 | a, b) = int_{1/2}^1 x^a (1-x)^b dx / B(a+1, b+1)``, with ``a``
    the count of the leading answer and ``b`` that of the runner-up (a uniform
    prior on the leading answer's share of the two). Evaluated as the
    regularized incomplete beta ``I_{1/2}(b+1, a+1)``; scalars and arrays go
    through the same ufunc, so the event policy and the sweep agree bit for bit.

    Examples
    --------
    >>> float(ac_stop_probability(3, 1))   # 13/16 by hand
    0.8125
    >>> float(ac_stop_probability(0, 0))
    0.5
    """
    return special.betainc(np.asarray(b, dtype=np.float64) + 1.0, np.asarray(a, dtype=np.float64) + 1.0, 0.5)


def percentile_rows(values: np.ndarray, q: float) -> np.ndarray:
    """Percentile ``q`` (0..100, linear interpolation) of each row of a 2-D array.

    The same arithmetic as ``numpy.percentile(..., method="linear")``, written
    out so that the event policy (one row) and the sweep (many rows) compute
    identical floats.

    Examples
    --------
    >>> percentile_rows(np.array([[4.0, 1.0, 3.0, 2.0]]), 50).tolist()
    [2.5]
    """
    x = np.sort(np.asarray(values, dtype=np.float64), axis=1)
    n = x.shape[1]
    h = (n - 1) * (float(q) / 100.0)
    lo = int(math.floor(h))
    hi = min(lo + 1, n - 1)
    return x[:, lo] + (h - lo) * (x[:, hi] - x[:, lo])


# --- base family ------------------------------------------------------------------------
class MultiChainFamily(Family):
    """Shared machinery of the multi-chain families.

    Subclasses define ``_grid`` (or override :attr:`grid`), :meth:`_policy`
    (the event policy at a knob value for ``n_chains`` logged chains) and
    :meth:`_sweep` (per-question arrays for one knob value).
    """

    kind: ClassVar[str] = "multi"
    _grid: ClassVar[tuple] = ()

    @property
    def grid(self) -> np.ndarray:
        return np.asarray(self._grid)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"

    def make(self, index: int, n_chains: int = 1):  # noqa: ANN201 - returns a Policy
        grid = self.grid
        if not 0 <= index < len(grid):
            raise ConfigError(f"grid index {index} out of range 0..{len(grid) - 1} for family '{self.name}'")
        if n_chains < 0:
            raise ConfigError(f"n_chains must be >= 0, got {n_chains}")
        return self._policy(grid[index].item(), int(n_chains))

    def _policy(self, value, n_chains: int):  # noqa: ANN001, ANN202
        raise NotImplementedError

    def _sweep(self, cm: ChainMatrix, value, ctx) -> tuple[np.ndarray, ...]:  # noqa: ANN001
        """``(answer, abstained, tokens, latency, chains)`` per question at one knob value."""
        raise NotImplementedError

    def _context(self, ts, cm: ChainMatrix):  # noqa: ANN001, ANN202
        """Arrays shared by every grid point of one sweep (none by default)."""
        return None

    def _full_answer(self, ts, cm: ChainMatrix, ctx) -> np.ndarray:  # noqa: ANN001
        return cm.at(cm.votes.winner, cm.counts, MISSING)

    def full(self, ts) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # noqa: ANN001
        """Self-consistency over every logged chain, all drawn at once (see the module docstring)."""
        cm = chain_matrix(ts)
        return self._full(ts, cm, self._context(ts, cm))

    def _full(self, ts, cm: ChainMatrix, ctx) -> tuple[np.ndarray, ...]:  # noqa: ANN001
        q = len(cm.counts)
        answer = self._full_answer(ts, cm, ctx).astype(np.int32)
        tokens = cm.n_tokens.sum(axis=1).astype(np.int64)
        latency = (cm.n_tokens.max(axis=1) if cm.width else np.zeros(q)).astype(np.int64)
        return answer, tokens, np.zeros(q, dtype=np.int64), latency, cm.counts.astype(np.int32)

    def replay(self, ts) -> ReplayResult:  # noqa: ANN001
        """Vectorized sweep of every grid point over ``ts`` (one row per question)."""
        cm = chain_matrix(ts)
        ctx = self._context(ts, cm)
        grid = self.grid
        q, g = len(cm.counts), len(grid)
        answer = np.empty((q, g), dtype=np.int32)
        abstained = np.zeros((q, g), dtype=bool)
        tokens = np.empty((q, g), dtype=np.int64)
        latency = np.empty((q, g), dtype=np.int64)
        chains = np.empty((q, g), dtype=np.int32)
        for k, value in enumerate(grid.tolist()):
            a, ab, t, lat, c = self._sweep(cm, value, ctx)
            answer[:, k], abstained[:, k], tokens[:, k], latency[:, k], chains[:, k] = a, ab, t, lat, c
        a_full, t_full, p_full, l_full, c_full = self._full(ts, cm, ctx)
        ref = np.asarray(ts.questions.column("reference_class").to_numpy(zero_copy_only=False), dtype=np.int32)
        return ReplayResult(
            family=self.name,
            grid=grid,
            unit="question",
            unit_question=np.arange(q, dtype=np.int64),
            answer=answer,
            abstained=abstained,
            tokens=tokens,
            probe_tokens=np.zeros((q, g), dtype=np.int64),
            latency=latency,
            chains=chains,
            answer_full=a_full,
            tokens_full=t_full,
            probe_tokens_full=p_full,
            latency_full=l_full,
            chains_full=c_full,
            correct_class=ref,
            notes=[f"{self.name}: {', '.join(f'{k}={v}' for k, v in self.settings().items()) or 'no settings'}"],
        )


def _no_abstention(q: int) -> np.ndarray:
    return np.zeros(q, dtype=bool)


# --- majority vote --------------------------------------------------------------------------
class _MajorityVotePolicy:
    def __init__(self, n: int, n_chains: int) -> None:
        self.m = min(n, n_chains)
        self.answers = [MISSING] * self.m
        self.done = 0

    def start(self) -> list[Action]:
        return [Spawn(self.m)] if self.m else [Final(MISSING)]

    def on_event(self, event: Event) -> list[Action]:
        if isinstance(event, Finished):
            self.answers[event.chain] = event.answer
            self.done += 1
            if self.done == self.m:
                return [Final(vote(self.answers))]
        return []


class MajorityVote(MultiChainFamily):
    """Self-consistency with a fixed number of chains ``n``.

    Spawns ``min(n, logged)`` chains at once and returns their vote once all
    have finished. Grid: ``max_n`` (default 64), then the powers of two below
    it down to 1; where ``n`` exceeds the chains logged for a question all of
    them are used, so on a set with 16 chains per question the grid points 64,
    32 and 16 coincide with full compute.

    Parameters
    ----------
    max_n : int
        The safest grid point.

    Examples
    --------
    >>> MajorityVote(max_n=8).grid.tolist()
    [8, 4, 2, 1]
    """

    name: ClassVar[str] = "majority_vote"
    knob: ClassVar[str] = "n"

    def __init__(self, max_n: int = 64) -> None:
        if int(max_n) < 1:
            raise ConfigError(f"majority_vote: max_n must be >= 1, got {max_n}")
        self.max_n = int(max_n)

    @property
    def grid(self) -> np.ndarray:
        return np.asarray([self.max_n] + [2**i for i in range(self.max_n.bit_length() - 1, -1, -1) if 2**i < self.max_n])

    def settings(self) -> dict:
        return {"max_n": self.max_n}

    def _policy(self, value, n_chains: int):  # noqa: ANN001, ANN202
        return _MajorityVotePolicy(int(value), n_chains)

    def _sweep(self, cm: ChainMatrix, value, ctx) -> tuple[np.ndarray, ...]:  # noqa: ANN001
        m = np.minimum(int(value), cm.counts)
        return (
            cm.at(cm.votes.winner, m, MISSING),
            _no_abstention(len(m)),
            cm.at(cm.cum_tokens, m),
            cm.at(cm.run_max, m),
            m,
        )


# --- adaptive consistency ---------------------------------------------------------------
class _AdaptiveConsistencyPolicy:
    def __init__(self, threshold: float, n_chains: int) -> None:
        self.threshold = float(threshold)
        self.n = n_chains
        self.answers: list[int] = []

    def start(self) -> list[Action]:
        return [Spawn(1)] if self.n else [Final(MISSING)]

    def on_event(self, event: Event) -> list[Action]:
        if not isinstance(event, Finished):
            return []
        self.answers.append(event.answer)
        t = tally(self.answers)
        if ac_stop_probability(t.top, t.runner_up) > self.threshold or len(self.answers) >= self.n:
            return [Final(t.winner)]
        return [Spawn(1)]


class AdaptiveConsistency(MultiChainFamily):
    """Adaptive-Consistency: draw one chain at a time until the Beta posterior is sure.

    After each chain finishes, with ``a`` the count of the leading answer and
    ``b`` that of the runner-up (missing answers do not count), stop when
    :func:`ac_stop_probability` ``(a, b)`` exceeds the threshold, or when every
    logged chain has been drawn; return the vote of the chains drawn. Chains run
    one after the other, so latency is the sum of their lengths. Grid:
    thresholds 0.999 down to 0.6 (the paper's default is 0.95).
    """

    name: ClassVar[str] = "adaptive_consistency"
    knob: ClassVar[str] = "threshold"
    _grid: ClassVar[tuple] = (0.999, 0.995, 0.99, 0.98, 0.95, 0.9, 0.8, 0.7, 0.6)

    def _policy(self, value, n_chains: int):  # noqa: ANN001, ANN202
        return _AdaptiveConsistencyPolicy(value, n_chains)

    def _context(self, ts, cm: ChainMatrix) -> np.ndarray:  # noqa: ANN001
        return ac_stop_probability(cm.votes.top, cm.votes.runner_up)

    def _sweep(self, cm: ChainMatrix, value, prob) -> tuple[np.ndarray, ...]:  # noqa: ANN001
        j = np.arange(cm.width)
        within = j[None, :] < cm.counts[:, None]
        stop = within & ((prob > float(value)) | (j[None, :] == cm.counts[:, None] - 1))
        m = np.where(cm.counts > 0, np.argmax(stop, axis=1) + 1 if cm.width else 0, 0)
        tokens = cm.at(cm.cum_tokens, m)
        return cm.at(cm.votes.winner, m, MISSING), _no_abstention(len(m)), tokens, tokens.copy(), m


# --- ESC -----------------------------------------------------------------------------------
class _ESCPolicy:
    def __init__(self, window: int, n_chains: int) -> None:
        self.w = window
        self.n = n_chains
        self.answers: list[int] = []
        self.begin = 0
        self.end = 0
        self.pending = 0

    def _next_window(self) -> list[Action]:
        self.begin = self.end
        self.end = min(self.begin + self.w, self.n)
        self.pending = self.end - self.begin
        self.answers.extend([MISSING] * self.pending)
        return [Spawn(self.pending)]

    def start(self) -> list[Action]:
        return self._next_window() if self.n else [Final(MISSING)]

    def on_event(self, event: Event) -> list[Action]:
        if not isinstance(event, Finished):
            return []
        self.answers[event.chain] = event.answer
        self.pending -= 1
        if self.pending:
            return []
        present = {a for a in self.answers[self.begin : self.end] if a != MISSING}
        if len(present) == 1 or self.end >= self.n:
            return [Final(vote(self.answers))]
        return self._next_window()


class ESC(MultiChainFamily):
    """Early-stopping self-consistency: windows of ``w`` chains until one window agrees.

    Spawns ``w`` chains at once and waits for all of them; stops at the first
    window whose non-missing answers all agree (at least one present), else
    draws the next window, up to the chains logged. Returns the vote of *all*
    chains drawn (which can differ from the agreeing window's answer). Latency
    is the sum over windows of each window's longest chain. Grid: window sizes
    8, 6, 5, 4, 3, 2 (a larger window is harder to agree on, so safer).
    """

    name: ClassVar[str] = "esc"
    knob: ClassVar[str] = "window"
    _grid: ClassVar[tuple] = (8, 6, 5, 4, 3, 2)

    def _policy(self, value, n_chains: int):  # noqa: ANN001, ANN202
        return _ESCPolicy(int(value), n_chains)

    def _sweep(self, cm: ChainMatrix, value, ctx) -> tuple[np.ndarray, ...]:  # noqa: ANN001
        w = int(value)
        q = len(cm.counts)
        n_win = -(-cm.width // w)
        pad = n_win * w - cm.width
        klass = np.pad(cm.klass, ((0, 0), (0, pad)), constant_values=MISSING).reshape(q, n_win, w)
        n_tok = np.pad(cm.n_tokens, ((0, 0), (0, pad))).reshape(q, n_win, w)
        present = klass >= 0
        hi = np.where(present, klass, -1).max(axis=2, initial=-1)
        lo = np.where(present, klass, np.iinfo(np.int64).max).min(axis=2, initial=np.iinfo(np.int64).max)
        agree = present.any(axis=2) & (hi == lo)
        wins_q = -(-cm.counts // w)
        j = np.arange(n_win)
        stop = (j[None, :] < wins_q[:, None]) & (agree | (j[None, :] == wins_q[:, None] - 1))
        last = np.argmax(stop, axis=1) if n_win else np.zeros(q, dtype=np.int64)
        m = np.where(cm.counts > 0, np.minimum((last + 1) * w, cm.counts), 0)
        if n_win:
            lat = np.cumsum(n_tok.max(axis=2), axis=1)[np.arange(q), last]
        else:
            lat = np.zeros(q, dtype=np.int64)
        lat = np.where(cm.counts > 0, lat, 0)
        return cm.at(cm.votes.winner, m, MISSING), _no_abstention(q), cm.at(cm.cum_tokens, m), lat, m


# --- first finish ----------------------------------------------------------------------------
class _FirstFinishPolicy:
    def __init__(self, n: int, n_chains: int) -> None:
        self.m = min(n, n_chains)

    def start(self) -> list[Action]:
        return [Spawn(self.m)] if self.m else [Final(MISSING)]

    def on_event(self, event: Event) -> list[Action]:
        if isinstance(event, Finished):
            return [Final(event.answer)]
        return []


class FirstFinish(MultiChainFamily):
    """First Finish Search: run ``n`` chains in parallel and return the first to finish.

    Spawns ``min(n, logged)`` chains at once; the first chain to finish (the
    shortest; on equal lengths the earliest in draw order) gives the answer,
    even a missing one (-1), and the others are cancelled on that tick (chains
    after the winner in draw order are one token short). Latency is the
    winner's length.

    Grid: n = 16, 8, 4, 2, 1. "Safe" here only means "most chains": a larger
    ``n`` costs more tokens and is *not* closer to full compute, which is the
    plain vote over every logged chain (the no-stopping version of drawing
    chains in parallel). Expect disagreement with full compute at every grid
    point.
    """

    name: ClassVar[str] = "first_finish"
    knob: ClassVar[str] = "n"
    _grid: ClassVar[tuple] = (16, 8, 4, 2, 1)

    def _policy(self, value, n_chains: int):  # noqa: ANN001, ANN202
        return _FirstFinishPolicy(int(value), n_chains)

    def _sweep(self, cm: ChainMatrix, value, ctx) -> tuple[np.ndarray, ...]:  # noqa: ANN001
        q = len(cm.counts)
        m = np.minimum(int(value), cm.counts)
        if cm.width == 0:
            z = np.zeros(q, dtype=np.int64)
            return np.full(q, MISSING), _no_abstention(q), z, z, m
        j = np.arange(cm.width)
        masked = np.where(j[None, :] < m[:, None], cm.n_tokens, np.iinfo(np.int64).max)
        win = np.argmin(masked, axis=1)  # first minimum: the earliest chain wins ties
        rows = np.arange(q)
        length = cm.n_tokens[rows, win]
        # winner and chains before it reached `length`; chains after it were cut one tick earlier
        tokens = np.where(length > 0, (win + 1) * length + (m - 1 - win) * (length - 1), 0)
        has = m > 0
        return (
            np.where(has, cm.klass[rows, win], MISSING),
            _no_abstention(q),
            np.where(has, tokens, 0),
            np.where(has, length, 0),
            m,
        )


# --- vote margin abstention -----------------------------------------------------------------
def _margin(top, runner_up, n_votes):  # noqa: ANN001, ANN202
    """(top - runner-up) / votes, 0 without votes; scalar or array."""
    top, runner_up, n_votes = (np.asarray(x, dtype=np.int64) for x in (top, runner_up, n_votes))
    return np.where(n_votes > 0, (top - runner_up) / np.maximum(n_votes, 1), 0.0)


class _VoteMarginPolicy:
    def __init__(self, threshold: float, n_chains: int) -> None:
        self.threshold = float(threshold)
        self.n = n_chains
        self.answers = [MISSING] * n_chains
        self.done = 0

    def _decide(self) -> list[Action]:
        t = tally(self.answers)
        if float(_margin(t.top, t.runner_up, t.n_votes)) < self.threshold:
            return [Abstain()]
        return [Final(t.winner)]

    def start(self) -> list[Action]:
        return [Spawn(self.n)] if self.n else self._decide()

    def on_event(self, event: Event) -> list[Action]:
        if isinstance(event, Finished):
            self.answers[event.chain] = event.answer
            self.done += 1
            if self.done == self.n:
                return self._decide()
        return []


class VoteMarginAbstain(MultiChainFamily):
    """Vote over every logged chain; abstain when the vote margin is thin.

    The margin is ``(top - runner_up) / n_votes`` (counts of the leading and
    second answers over the non-missing answers; 0 without any answer). The
    policy abstains when the margin is below the threshold, else returns the
    vote. It never saves tokens: it trades coverage for selective risk. Grid:
    thresholds 0 (never abstain, i.e. full compute) up to 0.8.
    """

    name: ClassVar[str] = "vote_margin_abstain"
    knob: ClassVar[str] = "margin"
    _grid: ClassVar[tuple] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)

    def _policy(self, value, n_chains: int):  # noqa: ANN001, ANN202
        return _VoteMarginPolicy(value, n_chains)

    def _context(self, ts, cm: ChainMatrix) -> np.ndarray:  # noqa: ANN001
        pv = cm.votes
        return _margin(cm.at(pv.top, cm.counts), cm.at(pv.runner_up, cm.counts), cm.at(pv.n_votes, cm.counts))

    def _sweep(self, cm: ChainMatrix, value, margin) -> tuple[np.ndarray, ...]:  # noqa: ANN001
        abstain = margin < float(value)
        winner = cm.at(cm.votes.winner, cm.counts, MISSING)
        latency = cm.n_tokens.max(axis=1) if cm.width else np.zeros(len(cm.counts), dtype=np.int64)
        return np.where(abstain, MISSING, winner), abstain, cm.n_tokens.sum(axis=1), latency, cm.counts.copy()
