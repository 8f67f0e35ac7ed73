"""Selective answering: scores, AUROC, the certified threshold, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from stopwise.data import bundled_path
from stopwise.errors import ConfigError
from stopwise.rules.selective import question_scores, selective_report
from stopwise.traces import read_trace_set
from stopwise.traces.synthetic import synthetic_trace_set


def test_scores_available_by_set_shape():
    multi, wrong = question_scores(read_trace_set(bundled_path("qwen25math_math100")))
    assert {"vote_share", "vote_margin", "probe_agreement"} <= set(multi)
    assert all(((v >= 0) & (v <= 1)).all() for v in multi.values()) and wrong.dtype == bool
    single, _ = question_scores(read_trace_set(bundled_path("r1_gsm8k")))
    assert set(single) == {"probe_agreement"}, "one chain per question: no vote scores, no probe logprobs"
    logprob, _ = question_scores(read_trace_set(bundled_path("gsm8k_qwen05")))
    assert "probe_confidence" in logprob


def test_auroc_and_certified_rule_on_qwq():
    rows = {r["score"]: r for r in selective_report(read_trace_set(bundled_path("qwq_gsm8k")), epsilon=0.05)}
    r = rows["probe_agreement"]
    assert 0.6 < r["auroc"] < 1.0
    assert r["certified"] and 0.5 < r["coverage"] < 1.0 and r["selective_risk"] < r["error_all"]
    # two scores are compared on this set: each is certified at delta / 2, so reading off the better one is covered
    assert r["k_policies"] == len(rows) == 2
    cov, risk = np.asarray(r["curve"]["coverage"]), np.asarray(r["curve"]["risk"])
    assert (np.diff(cov) <= 1e-12).all(), "a higher threshold answers fewer questions"
    assert len(cov) == len(risk)


def test_vote_margin_auroc_by_hand():
    from sklearn.metrics import roc_auc_score

    ts = synthetic_trace_set(80, 5, seed=2)
    scores, wrong = question_scores(ts)
    rows = {r["score"]: r for r in selective_report(ts)}
    from stopwise.stats.split import split_mask

    test = ~split_mask(ts.questions.column("question_id").to_pylist())
    assert rows["vote_margin"]["auroc"] == pytest.approx(roc_auc_score(~wrong[test], scores["vote_margin"][test]))


def test_unlabeled_refused_and_cli(tmp_path):
    ts = synthetic_trace_set(10, 2, seed=0)
    ts.chains = ts.chains.drop_columns(["correct"])
    with pytest.raises(ConfigError, match="no labels"):
        selective_report(ts)
    out = tmp_path / "abstain.json"
    r = subprocess.run([sys.executable, "-m", "stopwise.cli.main", "abstain", "--traces", bundled_path("r1_gsm8k"), "--json", out],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "AUROC" in r.stdout and json.loads(out.read_text())[0]["score"] == "probe_agreement"


def test_auroc_equals_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from stopwise.stats.ranking import auroc

    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(2, 60))
        s, y = rng.integers(0, 5, n) / 4, rng.random(n) < 0.6
        if y.all() or not y.any():
            assert auroc(s, y) is None
            continue
        assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_validate_selective_rows_and_a_control_that_can_fail():
    from stopwise.rules.selective import validate_selective

    rows = {r["policy"]: r for r in validate_selective(read_trace_set(bundled_path("qwen25math_math100")), epsilon=0.05, draws=60, seed=2)}
    assert set(rows) >= {"abstain:vote_share", "naive-control:abstain:vote_share", "abstain:probe_agreement"}
    r = rows["abstain:vote_share"]
    # the population leaves out the training role (the grid is read off it): 80 questions, draws of 40
    assert r["draws"] == 60 and r["n_calibration"] == 40 and r["risk"] == "selective"
    assert r["violation_frequency"] * 60 == pytest.approx(round(r["violation_frequency"] * 60))
    assert r["uncertified_draws"] > rows["naive-control:abstain:vote_share"]["uncertified_draws"]
    # the control that can fail does fail: the plug-in threshold overshoots epsilon in far more than delta of the draws
    naive = rows["naive-control:abstain:vote_share"]
    assert not naive["consistent"] and naive["violation_frequency"] > 0.3 and r["consistent"]


@pytest.mark.validity
def test_abstention_guarantee_holds_where_the_naive_calibrator_fails():
    """Over 300 random calibration halves of the Qwen2.5-Math set at epsilon 0.05: the certified threshold's
    selective risk on the whole set exceeds epsilon no more often than delta allows; the plug-in threshold's does."""
    from stopwise.rules.selective import validate_selective

    rows = {r["policy"]: r for r in validate_selective(read_trace_set(bundled_path("qwen25math_math100")), epsilon=0.05, draws=300, seed=1)}
    for score in ("vote_share", "vote_margin", "probe_agreement"):
        assert rows[f"abstain:{score}"]["consistent"], rows[f"abstain:{score}"]
    assert not rows["naive-control:abstain:vote_share"]["consistent"]
    assert not rows["naive-control:abstain:vote_margin"]["consistent"]


def test_full_risk_coverage_curve_by_hand():
    from stopwise.rules.selective import _risk_coverage

    # scores 0.9 (right), 0.8 (wrong), 0.8 (right), 0.1 (wrong): ties end together
    c = _risk_coverage(np.array([0.8, 0.9, 0.1, 0.8]), np.array([True, False, True, False]))
    assert c["coverage"] == [0.25, 0.75, 1.0]
    assert c["risk"] == pytest.approx([0.0, 1 / 3, 0.5])


def test_dual_threshold_regions_and_certificate():
    from stopwise.rules.selective import dual_threshold_report

    ts = synthetic_trace_set(600, 6, p_correct=0.7, seed=5)  # synthetic: large enough for both thresholds to certify
    r = dual_threshold_report(ts, score="vote_share", epsilon_answer=0.15, epsilon_set=0.2)
    assert r["answer_certified"] and r["set_certified"]
    assert r["t_set"] <= r["t_answer"]
    assert r["single_share"] + r["set_share"] + r["abstain_share"] == pytest.approx(1.0)
    assert r["mean_set_size"] is None or r["mean_set_size"] >= 1.0
    assert "Bonferroni" in r["guarantee"] and "delta/2" in r["guarantee"]
    assert r["single_share"] > 0 and r["set_share"] > 0 and r["abstain_share"] > 0
    assert r["single_error"] <= 0.15 + 0.05 and r["output_miss"] <= 0.2 + 0.05  # held-out, near the certified levels
    # the set risk counts what the claim counts: a wrong single answer is a miss too
    assert "a single answer, or a set" in r["guarantee"]
    with pytest.raises(ConfigError, match="not available"):
        dual_threshold_report(read_trace_set(bundled_path("r1_gsm8k")), score="vote_share")
    with pytest.raises(ConfigError, match="epsilon_set must lie"):
        dual_threshold_report(ts, epsilon_set=0.0)


def test_learned_probe_score_keeps_its_training_questions_out_of_calibration():
    from stopwise.rules.selective import learned_probe_score
    from stopwise.stats.split import split_mask, training_mask

    ts = read_trace_set(bundled_path("r1_gsm8k"))
    score, trained = learned_probe_score(ts)
    qids = ts.questions.column("question_id").to_pylist()
    assert trained.any() and not (trained & ~training_mask(qids)).any(), "trained only on the training role"
    assert ((score >= 0) & (score <= 1)).all()
    rows = {r["score"]: r for r in selective_report(ts, epsilon=0.05)}
    half = split_mask(qids)
    # every score calibrates on the half less the training role (the grids are read off it), the learned one too
    assert rows["learned_probe"]["n_calibration"] == int((half & ~training_mask(qids)).sum()) == rows["probe_agreement"]["n_calibration"]
    assert rows["learned_probe"]["n_test"] == rows["probe_agreement"]["n_test"]
    assert learned_probe_score(read_trace_set(bundled_path("gsm8k_qwen05"))) is not None
