"""The anytime-valid e-process vote: its formula, and its guarantee checked by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate

from stopwise.policies.base import Finished, Final, Spawn
from stopwise.policies.eprocess import EProcessVote, leader_evidence, log_bar, log_e_value
from stopwise.policies.multi import AdaptiveConsistency
from stopwise.stats.pvalues import clopper_pearson


@pytest.mark.parametrize("m,r", [(0, 0), (1, 0), (5, 2), (12, 3), (3, 9), (40, 25)])
def test_e_value_matches_the_integral(m, r):
    num, _ = integrate.quad(lambda p: (2 * p) ** m * (2 * (1 - p)) ** r, 0.5, 1.0, epsabs=0, epsrel=1e-12)
    assert math.isclose(math.exp(log_e_value(m, r)), 2 * num, rel_tol=1e-8)


def test_slots_split_alpha():
    assert sum(math.exp(-log_bar(0.05, j)) for j in range(1, 200000)) < 0.05
    assert log_bar(0.05, 2) > log_bar(0.05, 1)


def test_leader_evidence_starts_after_first_appearance():
    # the first vote for an answer is never evidence for it
    assert leader_evidence([3]) == (3, log_e_value(0, 0), 1)
    a, e, s = leader_evidence([-1, 2, 5, 5, 5, -1, 2])
    assert (a, s) == (5, 2) and e == log_e_value(2, 1)


def run_policy(policy, answers) -> tuple[int, int]:
    """Drive an event policy over a stream of answers; returns (answer, chains drawn)."""
    acts = policy.start()
    drawn = 0
    while True:
        assert acts and isinstance(acts[0], (Spawn, Final))
        if isinstance(acts[0], Final):
            return acts[0].answer, drawn
        a = answers[drawn]
        drawn += 1
        acts = policy.on_event(Finished(drawn - 1, 10, a))


def _simulate(family, k, probs, n_max, runs, seed):
    rng = np.random.default_rng(seed)
    wrong = stopped = 0
    majority = next((i for i, p in enumerate(probs) if p > 0.5), None)
    for _ in range(runs):
        answers = rng.choice(len(probs), size=n_max, p=probs).tolist()
        ans, drawn = run_policy(family.make(k, n_chains=n_max), answers)
        if drawn < n_max:  # the rule certified before running out of chains
            stopped += 1
            wrong += ans != majority
    return wrong, stopped


@pytest.mark.validity
@pytest.mark.parametrize("probs", [(0.45, 0.35, 0.2), (0.5, 0.5), (0.52, 0.48)])
def test_never_certifies_a_non_majority_more_than_alpha(probs):
    """Over 1500 runs of up to 120 chains: certified wrong answers <= alpha (upper CI), while Adaptive-Consistency's
    Beta posterior at 0.95, the negative control, certifies a non-majority answer far more often."""
    fam = EProcessVote()
    k = list(fam.grid).index(0.05)
    wrong, stopped = _simulate(fam, k, probs, 120, 1500, seed=11)
    lo, hi = clopper_pearson(wrong, 1500, 0.01)
    assert lo <= 0.05, (wrong, stopped)
    ac = AdaptiveConsistency()
    wrong_ac, _ = _simulate(ac, list(ac.grid).index(0.95), probs, 120, 1500, seed=12)
    assert wrong_ac / 1500 > 0.2, wrong_ac


def test_stops_early_on_a_clear_majority():
    fam = EProcessVote()
    k = list(fam.grid).index(0.05)
    ans, drawn = run_policy(fam.make(k, n_chains=64), [7] * 64)
    assert ans == 7 and drawn == 9  # 8 agreeing votes after the first reach 1/alpha_1 (E = 511/9)
    ans, drawn = run_policy(fam.make(k, n_chains=4), [7] * 4)
    assert ans == 7 and drawn == 4  # not enough chains to certify: the vote of all of them
