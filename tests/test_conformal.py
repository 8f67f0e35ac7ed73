"""Conformal answer sets and conformal selection: the statistics by hand, the glue, the CLI, and validity."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from stopwise.rules.conformal import answer_sets, candidates, select_answers, selection_scores, validate_selection, validate_sets
from stopwise.data import bundled_path
from stopwise.errors import ConfigError
from stopwise.stats.conformal import NONE, benjamini_hochberg, conformal_pvalues, conformal_quantile, nonconformity, prediction_sets
from stopwise.traces import read_trace_set


def test_quantile_has_the_finite_sample_correction():
    s = np.arange(1, 20) / 20.0  # 19 scores
    assert conformal_quantile(s, 0.1) == s[math.ceil(20 * 0.9) - 1]
    assert conformal_quantile(s[:5], 0.1) == math.inf  # too few to reach 1 - alpha: everything goes in
    with pytest.raises(ConfigError):
        conformal_quantile(s, 1.5)


def test_lac_and_aps_by_hand_with_a_none_element():
    probs = np.array([[0.5, 0.25, 0.0], [0.75, 0.0, 0.0]])  # row 0 leaves 0.25 to "none of these"
    assert np.allclose(nonconformity(probs, np.array([1, NONE])), [0.75, 0.75])
    sets = prediction_sets(probs, 0.5)  # keep elements with p >= 0.5
    assert sets.tolist() == [[True, False, False, False], [True, False, False, False]]
    sets = prediction_sets(probs, 0.75)
    assert sets[0].tolist() == [True, True, False, True] and sets[1].tolist() == [True, False, False, True]
    aps = nonconformity(probs, np.array([0, 0]), "aps", seed=3)
    assert ((aps >= 0) & (aps <= np.array([0.5, 0.75]) + 1e-12)).all()  # U * p(top)
    with pytest.raises(ConfigError, match="rows summing"):
        nonconformity(np.array([[0.8, 0.5]]), np.array([0]))
    with pytest.raises(ConfigError, match="labels"):
        nonconformity(probs, np.array([5, 0]))


def test_pvalues_and_bh_by_hand():
    p = conformal_pvalues(np.array([0.9, 0.8, 0.3, 0.2]), np.array([False, True, True, False]), np.array([0.95, 0.5, 0.1]))
    assert np.allclose(p, [1 / 5, 2 / 5, 3 / 5])
    assert benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5]), 0.1).tolist() == [True, True, True, False]
    assert benjamini_hochberg(np.array([0.2, 0.3]), 0.1).tolist() == [False, False]


def test_candidates_put_missing_mass_on_none():
    ts = read_trace_set(bundled_path("gsm8k_qwen05"))
    probs, classes, labels = candidates(ts)
    assert probs.shape == classes.shape and (probs.sum(axis=1) <= 1 + 1e-12).all()
    assert ((labels == NONE) | (labels >= 0)).all() and (labels == NONE).mean() > 0.2  # the 0.5B model often never finds it
    out = answer_sets(ts, alpha=0.2)
    assert out["n_calibration"] + out["n_test"] == ts.n_questions


def test_selection_scores_and_release():
    ts = read_trace_set(bundled_path("r1_gsm8k"))
    answer, score, wrong = selection_scores(ts)
    assert ((score >= 0) & (score <= 1)).all() and len(np.unique(score)) > 5  # probe agreement on one-chain sets
    out = select_answers(ts, q=0.05)
    assert 0 < out["released"] <= out["n_test"]
    # FDR is an expectation: one split's FDP says little, so the check is over 100 random splits, the mean FDP
    # against q with its 99% margin
    v = validate_selection(ts, q=0.05, draws=100, seed=3)
    assert v["consistent"] and v["draws"] == 100, v
    with pytest.raises(ConfigError, match="unknown selection score"):
        selection_scores(ts, "margin")


def test_unlabeled_set_is_refused(tmp_path):
    from stopwise.traces.synthetic import synthetic_trace_set

    ts = synthetic_trace_set(10, 2, seed=0)
    ts.chains = ts.chains.drop_columns(["correct"])
    with pytest.raises(ConfigError, match="no labels"):
        answer_sets(ts)


def test_cli_sets_and_select(tmp_path):
    for cmd, extra in (("sets", ["--alpha", "0.1"]), ("select", ["--q", "0.1"])):
        out = tmp_path / f"{cmd}.json"
        r = subprocess.run([sys.executable, "-m", "stopwise.cli.main", cmd, "--traces", bundled_path("r1_gsm8k"), *extra,
                            "--json", out], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert "guarantee" in r.stdout and json.loads(out.read_text())[0]["trace_set"] == "r1_gsm8k"


@pytest.mark.validity
@pytest.mark.parametrize("name,alpha", [("qwen25math_math100", 0.02), ("r1_gsm8k", 0.02), ("gsm8k_qwen05", 0.3)])
@pytest.mark.parametrize("score", ["lac", "aps"])
def test_set_coverage_holds_over_200_splits_and_top1_fails(name, alpha, score):
    v = validate_sets(read_trace_set(bundled_path(name)), alpha=alpha, score=score, draws=200, seed=7)
    assert v["consistent"], v
    assert not v["control_consistent"], v


@pytest.mark.validity
@pytest.mark.parametrize("name,q", [("qwen25math_math100", 0.02), ("r1_gsm8k", 0.02), ("dsq_gsm8k", 0.02)])
def test_selection_fdr_holds_over_200_splits_and_release_all_fails(name, q):
    v = validate_selection(read_trace_set(bundled_path(name)), q=q, draws=200, seed=8)
    assert v["consistent"], v
    assert not v["control_consistent"], v


def test_set_decision_rule_answers_only_single_real_answers():
    ts = read_trace_set(bundled_path("qwen25math_math100"))
    r = answer_sets(ts, alpha=0.1)
    assert 0.0 <= r["answered_share"] <= r["singleton_share"] + 1e-12
    if r["answered_share"] > 0:
        assert 0.0 <= r["answered_accuracy"] <= 1.0
    # the rule never answers a set that holds "none of these"
    assert r["answered_share"] <= 1.0 - r["none_share"] + 1e-12
