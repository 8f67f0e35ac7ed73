"""Budget mode: the most accurate setting under a certified mean-token cap."""

from __future__ import annotations

import numpy as np
import pytest

from stopwise.budget import budget_candidates, budget_report
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
    r = budget_report(ts, cap=1e9, families=["token_budget", "majority_vote"])
    assert r["admissible"] == r["candidates"] == len(names)
    cal = split_mask(ts.questions.column("question_id").to_pylist())
    acc = correct[cal].mean(axis=0)
    assert r["calibration_accuracy"] == pytest.approx(acc.max())
    assert r["chosen"] in [names[j] for j in np.flatnonzero(acc == acc.max())]


def test_tight_cap_certifies_only_cheap_settings():
    ts = synthetic_trace_set(400, 4, seed=2)  # synthetic: enough questions for the bound to admit something
    r = budget_report(ts, cap=450.0, families=["token_budget", "majority_vote"])
    assert r["admissible"] >= 1 and r["calibration_cost"] <= 450.0
    assert r["mean_cost"] <= 450.0 * 1.2, "held-out mean cost near the certified cap"
    assert r["estimated"]["mean_cost"] >= 0 and "no confidence bound" in r["estimated"]["note"]


def test_bad_inputs():
    ts = synthetic_trace_set(40, 2, seed=0)
    with pytest.raises(ConfigError, match="cap must be a positive"):
        budget_report(ts, cap=0)
    with pytest.raises(ConfigError, match="delta must lie strictly"):
        budget_report(ts, cap=100, delta=1.5)
    ts.chains = ts.chains.drop_columns(["correct"])
    with pytest.raises(ConfigError, match="no labels"):
        budget_report(ts, cap=100)
