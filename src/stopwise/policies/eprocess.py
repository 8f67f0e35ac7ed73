"""Anytime-valid adaptive sampling: stop drawing chains once an e-process certifies the majority answer.

One chain at a time (like Adaptive-Consistency), but the stopping rule carries
its own guarantee, with no calibration set: with probability at least
``1 - alpha`` over the model's sampling, the rule never returns an answer that
is not the model's majority answer *among chains that give an answer* (an
answer the model gives with probability above one half, conditionally on the
chain giving an answer at all), whatever the number of chains drawn and
however the stop was decided (Ville's inequality, as in certified stopping for
self-consistency). Chains with no answer are dropped, not counted against the
leader, so the null is conditional: an answer with 40% of all chains and 70%
of the answering ones is a majority answer here. Whether a chain answers must
not depend on which answer it would give for this to be the unconditional
majority.

Construction
------------
For the answer ``a`` that fills the ``j``-th *slot* (the ``j``-th distinct
answer to appear, in draw order), an e-process starts right after its first
appearance. Among the later chains with an answer, ``m`` vote for ``a`` and
``r`` for something else; under the null "``a``'s probability is at most 1/2",

    E_a = 2 * int_{1/2}^{1} (p / (1/2))^m ((1 - p) / (1/2))^r dp

(a mixture over alternatives ``p >= 1/2`` of likelihood ratios against
``p = 1/2``, each a supermartingale under every null ``p <= 1/2``) is an
e-process. The rule stops when the current leader's ``E_a`` reaches
``1 / alpha_j`` with ``alpha_j = alpha * 6 / (pi^2 j^2)``: the slots split
alpha (sum over j is alpha), and starting each e-process after the slot is
filled (a stopping time) keeps it valid although which answer fills the slot is
random. A leader's ``E`` is never below another answer's with the same slot
bar, so checking the leader suffices. Missing answers never vote (the null
above is conditional on a chain answering). When the
logged chains run out first, the vote of all of them is returned (that
question is not certified).

The knob is alpha; ``stopwise calibrate`` can still certify it for the
disagreement risk like any family, and the policy file then carries both.

References
----------
.. [1] V. Vovk, R. Wang, "E-values: calibration, combination and applications",
   Annals of Statistics, 2021.
.. [2] A. Ramdas, P. Grunwald, V. Vovk, G. Shafer, "Game-theoretic statistics and
   safe anytime-valid inference", Statistical Science, 2023.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
from scipy import special

from stopwise.policies.base import MISSING, Action, Event, Final, Finished, Spawn
from stopwise.policies.multi import ChainMatrix, MultiChainFamily, _no_abstention
from stopwise.policies.voting import tally

__all__ = ["EProcessVote", "leader_evidence", "log_e_value", "log_bar"]

_LN2 = math.log(2.0)


def log_e_value(m: int, r: int) -> float:
    """``log E`` after ``m`` votes for the answer and ``r`` against it (counted after its first appearance).

    Examples
    --------
    >>> round(math.exp(log_e_value(0, 0)), 12)   # nothing seen yet: E = 1
    1.0
    >>> round(math.exp(log_e_value(3, 0)), 6)    # (2^4 - 1) / 4
    3.75
    """
    # 2^(m+r+1) * int_{1/2}^1 p^m (1-p)^r dp = 2^(m+r+1) B(m+1, r+1) I_{1/2}(r+1, m+1)
    tail = float(special.betainc(r + 1, m + 1, 0.5))
    if tail <= 0.0:
        return -math.inf
    return (m + r + 1) * _LN2 + float(special.betaln(m + 1, r + 1)) + math.log(tail)


def log_bar(alpha: float, slot: int) -> float:
    """``log(1 / alpha_j)`` with ``alpha_j = alpha * 6 / (pi^2 j^2)`` for slot ``j >= 1``."""
    return -math.log(alpha * 6.0 / (math.pi**2 * slot * slot))


def leader_evidence(answers: list[int]) -> tuple[int, float, int]:
    """``(leader, log E of the leader, leader's slot)`` after ``answers`` (draw order; -1 never votes)."""
    t = tally(answers)
    a = t.winner
    if a == MISSING:
        return MISSING, -math.inf, 0
    slots: list[int] = []
    first = -1
    for i, c in enumerate(answers):
        if c != MISSING and c not in slots:
            slots.append(c)
            if c == a:
                first = i
    m = r = 0
    for c in answers[first + 1:]:
        if c == MISSING:
            continue
        if c == a:
            m += 1
        else:
            r += 1
    return a, log_e_value(m, r), slots.index(a) + 1


class _EProcessPolicy:
    """Incremental form of :func:`leader_evidence` (the same integers, so the same decisions)."""

    def __init__(self, alpha: float, n_chains: int) -> None:
        self.alpha = float(alpha)
        self.n = n_chains
        self.drawn = 0
        self.slots: list[int] = []  # answers in order of first appearance
        self.count: dict[int, int] = {}  # votes per answer
        self.after: dict[int, int] = {}  # answered chains after the answer's first appearance
        self.for_after: dict[int, int] = {}  # of those, votes for the answer

    def start(self) -> list[Action]:
        return [Spawn(1)] if self.n else [Final(MISSING)]

    def _leader(self) -> int:
        best = MISSING
        for a in self.slots:  # ties go to the earliest first vote, as in tally()
            if best == MISSING or self.count[a] > self.count[best]:
                best = a
        return best

    def on_event(self, event: Event) -> list[Action]:
        if not isinstance(event, Finished):
            return []
        self.drawn += 1
        c = int(event.answer)
        if c != MISSING:
            for a in self.slots:
                self.after[a] += 1
                if a == c:
                    self.for_after[a] += 1
            if c not in self.count:
                self.slots.append(c)
                self.count[c], self.after[c], self.for_after[c] = 0, 0, 0
            self.count[c] += 1
        leader = self._leader()
        if leader != MISSING:
            m = self.for_after[leader]
            log_e = log_e_value(m, self.after[leader] - m)
            if log_e >= log_bar(self.alpha, self.slots.index(leader) + 1):
                return [Final(leader)]
        if self.drawn >= self.n:
            return [Final(leader)]
        return [Spawn(1)]


class EProcessVote(MultiChainFamily):
    """Anytime-valid adaptive sampling: one chain at a time until an e-process certifies the leader.

    See the module docstring for the construction and the guarantee. Chains run
    one after the other (latency is the sum of their lengths). Grid: alpha =
    0.001 (safest) up to 0.5.
    """

    name: ClassVar[str] = "eprocess_vote"
    knob: ClassVar[str] = "alpha"
    _grid: ClassVar[tuple] = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)

    def _policy(self, value, n_chains: int):  # noqa: ANN001, ANN202
        return _EProcessPolicy(value, n_chains)

    def _context(self, ts, cm: ChainMatrix) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
        """The leader's log E and slot after every prefix of every question (the event policy's own function)."""
        q, w = cm.klass.shape
        log_e = np.full((q, w), -np.inf)
        slot = np.ones((q, w), dtype=np.int64)
        for i in range(q):
            row = cm.klass[i].tolist()
            for k in range(int(cm.counts[i])):
                leader, e, s = leader_evidence(row[: k + 1])
                if leader != MISSING:
                    log_e[i, k], slot[i, k] = e, s
        return log_e, slot

    def _sweep(self, cm: ChainMatrix, value, ctx) -> tuple[np.ndarray, ...]:  # noqa: ANN001
        log_e, slot = ctx
        bars = {s: log_bar(float(value), s) for s in np.unique(slot).tolist()}
        bar = np.vectorize(bars.__getitem__, otypes=[np.float64])(slot) if slot.size else slot.astype(np.float64)
        j = np.arange(cm.width)
        within = j[None, :] < cm.counts[:, None]
        stop = within & ((log_e >= bar) | (j[None, :] == cm.counts[:, None] - 1))
        m = np.where(cm.counts > 0, np.argmax(stop, axis=1) + 1 if cm.width else 0, 0)
        tokens = cm.at(cm.cum_tokens, m)
        return cm.at(cm.votes.winner, m, MISSING), _no_abstention(len(m)), tokens, tokens.copy(), m
