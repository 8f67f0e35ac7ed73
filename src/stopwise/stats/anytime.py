"""Anytime-valid confidence sequences for a stream of losses in [0, 1].

:func:`mixture_halfwidth` is the normal-mixture boundary of Robbins for a
sum of sigma^2-sub-Gaussian increments (a [0, 1] variable is 1/4-sub-Gaussian):
with ``V = sigma^2 n``,

    P( exists n: |S_n - n mu| >= sqrt(2 (V + rho) log(sqrt((V + rho) / rho) / alpha)) ) <= alpha,

so ``mean_n +/- halfwidth(n)`` covers the true mean at *every* n at once with
probability at least ``1 - alpha`` (Howard, Ramdas, McAuliffe, Sekhon,
"Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann.
Statist. 2021, eq. (3.7) with the normal mixture). ``rho`` tunes where the
boundary is tightest (about ``n = rho / sigma^2``); it must be fixed in advance.
Peeking after every observation is allowed: that is the point.

:class:`RiskMonitor` keeps such a sequence for a live disagreement rate and
says when its lower bound is above a target epsilon (the live risk exceeds
epsilon, with the stated confidence, whenever one chooses to look).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def mixture_halfwidth(n: int, alpha: float, *, rho: float = 25.0, sigma2: float = 0.25) -> float:
    """Half-width on the mean after ``n`` observations (inf for n = 0)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n <= 0:
        return math.inf
    v = sigma2 * n
    return math.sqrt(2.0 * (v + rho) * math.log(math.sqrt((v + rho) / rho) / alpha)) / n


@dataclass
class RiskMonitor:
    """A running 0/1 loss rate with an anytime-valid confidence sequence.

    Parameters
    ----------
    epsilon : float
        The certified risk to compare against.
    alpha : float
        Error probability of the sequence (uniform over time).
    rho : float
        Mixture parameter; tightest near ``n = 4 rho`` observations.
    """

    epsilon: float
    alpha: float = 0.05
    rho: float = 25.0
    n: int = 0
    losses: float = 0.0

    def update(self, loss: float) -> None:
        if not 0.0 <= loss <= 1.0:
            raise ValueError(f"loss must be in [0, 1], got {loss}")
        self.n += 1
        self.losses += loss

    @property
    def mean(self) -> float:
        return self.losses / self.n if self.n else math.nan

    @property
    def lower(self) -> float:
        return max(0.0, self.mean - mixture_halfwidth(self.n, self.alpha, rho=self.rho)) if self.n else 0.0

    @property
    def upper(self) -> float:
        return min(1.0, self.mean + mixture_halfwidth(self.n, self.alpha, rho=self.rho)) if self.n else 1.0

    @property
    def alarm(self) -> bool:
        """The live risk is above epsilon (the lower confidence bound exceeds it)."""
        return self.n > 0 and self.lower > self.epsilon
