"""Budget mode: the most accurate setting under a certified mean-token cap."""

from __future__ import annotations

import numpy as np
import pytest

from stopwise.rules.budget import budget_candidates, budget_report
from stopwise.data import bundled_path
from stopwise.errors import ConfigError
from stopwise.stats.split import split_mask
from stopwise.traces import read_trace_set
from stopwise.traces.synthetic import synthetic_trace_set


def test_candidates_cover_every_family_setting_per_question():
    ts = read_trace_set(bundled_path("qwen25math_math100"))
    names, cost, correct, excluded = budget_candidates(ts, ["token_budget", "majority_vote"])
    assert cost.shape == correct.shape == (ts.n_questions, len(names)) and not excluded.any()
    assert any(n.startswith("majority_vote") for n in names) and any(n.endswith("(first chain)") for n in names)
    assert (cost >= 0).all()


def test_no_cap_admits_everything_and_picks_the_most_accurate_on_calibration():
    ts = read_trace_set(bundled_path("qwen25math_math100"))
    names, cost, correct, _ = budget_candidates(ts, ["token_budget", "majority_vote"])
    # a cap at the a-priori cost bound: every setting is within it for certain
    r = budget_report(ts, cap=1e9, families=["token_budget", "majority_vote"], cost_bound=1e9)
    assert r["admissible"] == r["candidates"] == len(names)
    cal = split_mask(ts.questions.column("question_id").to_pylist())
    acc = correct[cal].mean(axis=0)
    assert r["calibration_accuracy"] == pytest.approx(acc.max())
    assert r["chosen"] in [names[j] for j in np.flatnonzero(acc == acc.max())]


def test_the_cost_bound_is_fixed_before_the_data_and_never_taken_from_it():
    ts = synthetic_trace_set(400, 4, seed=2)  # synthetic: no max_tokens recorded, priced probes
    r = budget_report(ts, cap=450.0, families=["token_budget", "majority_vote"])
    assert r["bound"] is None and r["admissible"] == 0 and r["chosen"] is None and "--cost-bound" in r["guarantee"]
    assert r["estimated"]["mean_cost"] >= 0 and "no confidence bound" in r["estimated"]["note"]
    # a bound that some question exceeds was no bound: refused, not clipped
    with pytest.raises(ConfigError, match="above the cost bound"):
        budget_report(ts, cap=450.0, families=["token_budget", "majority_vote"], cost_bound=100.0)
    # a collected set with free probes derives it from its settings: chains per question x max_tokens
    from stopwise.rules.budget import prior_cost_bound

    direct = read_trace_set(bundled_path("gsm8k_qwen05_direct"))
    assert prior_cost_bound(direct) == 16.0
    assert prior_cost_bound(read_trace_set(bundled_path("gsm8k_qwen05"))) is None  # priced probes


def test_certified_cap_holds_for_every_admissible_setting_exactly():
    """Costs in [0, B] with known expectations: over repeated calibration draws, the event "every admissible setting's
    expected cost is <= cap" holds in at least 1 - delta of the draws (binomial margin), and the cheap settings are
    admitted in most draws. The cap is asserted exactly, on the expectations, not on a held-out mean."""
    from scipy import stats

    from stopwise.rules.budget import admissible_settings

    rng = np.random.default_rng(0)
    bound, cap, delta, n, draws = 1000.0, 300.0, 0.1, 400, 400
    means = np.array([150.0, 250.0, 290.0, 300.0, 310.0, 400.0])  # expected costs; the last three are above or at the cap
    failures = admitted_cheap = 0
    for _ in range(draws):
        # a scaled Beta per setting: values in [0, bound], mean exactly means[j]
        a = 2.0
        b = a * (bound - means) / means
        cost = bound * rng.beta(a, b, size=(n, len(means)))
        ok, p = admissible_settings(cost, cap, bound, delta)
        failures += bool((means[ok] > cap).any())
        admitted_cheap += bool(ok[0])
        assert ((p <= delta / len(means)) == ok).all()
    assert stats.binomtest(failures, draws, delta, alternative="greater").pvalue > 0.01
    assert admitted_cheap > 0.9 * draws


def test_bad_inputs():
    ts = synthetic_trace_set(40, 2, seed=0)
    with pytest.raises(ConfigError, match="cap must be a positive"):
        budget_report(ts, cap=0)
    with pytest.raises(ConfigError, match="delta must lie strictly"):
        budget_report(ts, cap=100, delta=1.5)
    ts.chains = ts.chains.drop_columns(["correct"])
    with pytest.raises(ConfigError, match="no labels"):
        budget_report(ts, cap=100)
