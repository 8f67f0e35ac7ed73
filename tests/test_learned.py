"""The learned exit probe: roles, training, features, policy files and transfer."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from stopwise.evaluation.bench import bench_set
from stopwise.data import bundled_path
from stopwise.errors import ConfigError
from stopwise.policies.features import FEATURE_GROUPS, ChainFeatures, available_groups, feature_names, set_features
from stopwise.policies.learned import LearnedExit, ProbeModel, train_probe_model
from stopwise.policies.registry import prepare_family
from stopwise.policies.single import probe_arrays
from stopwise.stats.split import TRAIN_FRACTION, split_mask, split_score, training_mask
from stopwise.traces import read_trace_set
from stopwise.traces.synthetic import synthetic_trace_set


@pytest.fixture(scope="module")
def syn():
    return synthetic_trace_set(80, 2, mean_tokens=200, seed=3, name="syn")


@pytest.fixture(scope="module")
def r1():
    return read_trace_set(bundled_path("r1_gsm8k"))


def test_training_role_is_inside_the_calibration_half_and_the_same_everywhere():
    ids = [f"q-{i}" for i in range(2000)]
    tr, cal = training_mask(ids), split_mask(ids)
    assert not (tr & ~cal).any(), "a training question outside the calibration half would leak into the test half"
    assert 0.15 < tr.mean() < 0.25 and TRAIN_FRACTION == 0.2
    assert all(split_score(q) < TRAIN_FRACTION for q, t in zip(ids, tr) if t)


def test_model_is_fitted_on_the_training_role_only(syn):
    fam = LearnedExit().train(syn)
    qids = syn.questions.column("question_id").to_pylist()
    trained = set(fam.model.trained_on["question_ids"])
    assert trained == {q for q, t in zip(qids, training_mask(qids)) if t}
    assert np.array_equal(fam.training_mask(syn), training_mask(qids))
    assert fam.model.groups == available_groups(syn) == tuple(FEATURE_GROUPS)
    assert fam.model.C > 0 and 0 < fam.model.trained_on["positive_share"] < 1
    # training again is a no-op; an untrained family cannot replay
    assert fam.train(syn) is fam
    with pytest.raises(ConfigError, match="no fitted model"):
        LearnedExit().replay(syn)


def test_bench_leaves_the_training_role_out_of_calibration(syn):
    sb = bench_set(syn, families=["learned_exit", "first_candidate"])
    rows = {r.policy: r for r in sb.rows}
    n_train = int(training_mask(syn.questions.column("question_id").to_pylist()).sum())
    assert rows["learned_exit"].n_calibration == rows["first_candidate"].n_calibration - n_train
    assert rows["learned_exit"].n_test == rows["first_candidate"].n_test


def test_too_few_training_questions_is_a_clear_error():
    tiny = synthetic_trace_set(3, 1, mean_tokens=100, seed=0, name="tiny")
    with pytest.raises(ConfigError, match="training-role questions") as exc:
        train_probe_model(tiny)
    assert "split score" in str(exc.value)


def test_missing_feature_group_is_refused(r1, syn):
    assert available_groups(r1) == ("probe",)  # text-derived probes: no logprobs, no token scalars
    with pytest.raises(ConfigError, match="cannot feed feature groups"):
        train_probe_model(r1, groups=["probe", "token"])
    full = LearnedExit().train(syn)  # a model that needs token features
    assert "feature groups" in LearnedExit(model=full.model).supports(r1)


def test_features_see_nothing_of_the_future(syn):
    """The vector at a probe does not change when everything after it is cut off."""
    pa = probe_arrays(syn)
    X = set_features(syn, pa, FEATURE_GROUPS)
    j = int(np.argmax(pa.counts))
    a, b = int(pa.offsets[j]), int(pa.offsets[j + 1])
    k = a + (b - a) // 2
    _, conf = syn.list_column("token_confidence")
    _, lp = syn.list_column("token_logprobs")
    _, ent = syn.list_column("entropy")
    off = syn.list_column("entropy")[0]
    p = int(pa.position[k])
    cf = ChainFeatures(tuple(FEATURE_GROUPS))
    i0 = int(off[j])
    for t in range(p):  # event mode, fed only up to the probe
        cf.add_token(float(lp[i0 + t]), float(conf[i0 + t]), float(ent[i0 + t]))
        while a < k and int(pa.position[a]) == t + 1:
            cf.at_probe(int(pa.position[a]), int(pa.klass[a]), float(pa.logprob[a]), pa.cue[a])
            a += 1
    v = cf.at_probe(p, int(pa.klass[k]), float(pa.logprob[k]), pa.cue[k])
    assert np.array_equal(np.asarray(v), X[k])
    assert len(v) == len(feature_names(FEATURE_GROUPS))


def test_probe_model_round_trip_and_bad_input(syn):
    m = LearnedExit().train(syn).model
    d = json.loads(json.dumps(m.to_dict()))
    m2 = ProbeModel.from_dict(d)
    x = [0.5] * len(m.features)
    assert m2.score(x) == m.score(x) and 0.0 <= m.score(x) <= 1.0
    with pytest.raises(ConfigError, match="not a probe model"):
        ProbeModel.from_dict({"coef": [1.0]})
    bad = dict(d, coef=d["coef"][:-1])
    with pytest.raises(ConfigError, match="features but"):
        ProbeModel.from_dict(bad)
    with pytest.raises(ConfigError, match="unknown feature groups"):
        LearnedExit(groups=["probe", "hidden"])
    with pytest.raises(ConfigError, match="train_fraction"):
        LearnedExit(train_fraction=0.6)


def test_transfer_model_masks_only_the_questions_it_saw(r1):
    donor = read_trace_set(bundled_path("qwq_math52"))
    m = train_probe_model(donor, fraction=1.0)
    fam = LearnedExit(model=m)
    assert not fam.training_mask(r1).any(), "GSM8K questions were never seen by a MATH-trained probe"
    assert fam.training_mask(donor).all(), "every donor question is off limits for calibration"
    res = fam.replay(r1)
    assert res.answer.shape == (r1.n_chains, len(fam.grid))
    # safest grid point never stops earlier than the most aggressive one
    assert (res.tokens[:, 0] >= res.tokens[:, -1]).all()


def test_score_is_monotone_in_the_grid_and_threshold_zero_is_first_answer(r1):
    fam = prepare_family("learned_exit", r1)
    res = fam.replay(r1)
    assert np.all(np.diff(res.tokens.sum(axis=0)) <= 0), "a lower threshold can only stop earlier"
    ftm = prepare_family("first_candidate", r1).replay(r1)
    # threshold 0 stops at the first answered probe, which is First-Try-Matters with r = 0
    assert np.array_equal(res.tokens[:, -1], ftm.tokens[:, -1]) and np.array_equal(res.answer[:, -1], ftm.answer[:, -1])


def test_cli_calibrate_trains_then_reuses_the_model(tmp_path):
    def run(*args):
        r = subprocess.run([sys.executable, "-m", "stopwise.cli.main", *map(str, args)], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        return r

    p1, p2 = tmp_path / "le_r1.json", tmp_path / "le_qwq.json"
    run("calibrate", "--traces", bundled_path("r1_gsm8k"), "--policy", "learned_exit", "--out", p1)
    doc = json.loads(p1.read_text())
    model = doc["settings"]["model"]
    assert model["format"] == "stopwise-probe-model-v1" and len(model["coef"]) == len(model["features"])
    assert "less the" in doc["calibration_questions"] and doc["certificate"]["n"] < 291
    run("calibrate", "--traces", bundled_path("qwq_gsm8k"), "--policy", "learned_exit", "--settings-from", p1, "--out", p2)
    doc2 = json.loads(p2.read_text())
    assert doc2["settings"]["model"]["coef"] == model["coef"], "the weights transfer unchanged"
    r = subprocess.run([sys.executable, "-m", "stopwise.cli.main", "calibrate", "--traces", bundled_path("qwq_gsm8k"),
                        "--policy", "esc", "--settings-from", p1, "--out", tmp_path / "x.json"], capture_output=True, text=True)
    assert r.returncode == 2 and "written for family 'learned_exit'" in r.stderr
    assert not math.isnan(doc2["certificate"]["empirical_risk"])


def test_combined_policy_settings_round_trip(syn):
    """A combined policy file's settings (probe model and declared path) rebuild the same family."""
    from stopwise.policies.registry import get_family

    multi = synthetic_trace_set(60, 3, mean_tokens=150, seed=1, name="syn3")
    fam = prepare_family("combined", multi)
    again = get_family("combined", **json.loads(json.dumps(fam.settings())))
    a, b = fam.replay(multi), again.replay(multi)
    assert np.array_equal(a.answer, b.answer) and np.array_equal(a.tokens, b.tokens)
    assert np.array_equal(fam.training_mask(multi), again.training_mask(multi))
    with pytest.raises(ConfigError, match="declared path"):
        get_family("combined", **{**fam.settings(), "path": [[0.5, 0.5]]})
