"""The anchors comparison: published rules, stopwise's certified policies and the oracle, side by side."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from stopwise.evaluation.anchors import (
    EPSILONS,
    ROW_KEYS,
    adaptive_consistency_package,
    compare_set,
    compare_sets,
    donor_sets,
    permuted_chains,
    summarize,
)
from stopwise.data import bundled_path
from stopwise.policies.registry import get_family
from stopwise.traces import read_trace_set
from stopwise.traces.synthetic import synthetic_trace_set


@pytest.fixture(scope="module")
def multi():
    return synthetic_trace_set(120, 6, mean_tokens=160, seed=4, name="syn-multi")


def test_adaptive_consistency_package_agrees_with_stopwise_family(multi):
    """The AdaptiveConsistency package itself and stopwise's vectorized family make the same decisions."""
    thresholds = (0.99, 0.95, 0.9, 0.8)
    pkg = adaptive_consistency_package(multi, thresholds)
    fam = get_family("adaptive_consistency").replay(multi)
    for k, thr in enumerate(thresholds):
        j = [round(float(g), 6) for g in fam.grid].index(thr)
        assert np.array_equal(pkg.chains[:, k], fam.chains[:, j])
        assert np.array_equal(pkg.answer[:, k], fam.answer[:, j])
        assert np.array_equal(pkg.tokens[:, k], fam.tokens[:, j])
    assert np.array_equal(pkg.answer_full, fam.answer_full)


def test_rows_cover_every_method_and_hindsight_respects_epsilon(multi):
    out = compare_set(multi)
    rows = out["rows"]
    assert rows and all(set(ROW_KEYS) <= set(r) for r in rows)
    methods = {r["method"] for r in rows}
    for m in ("dynasor-cot/32 [hindsight]", "dynasor-cot/64 [certified]", "deer [hindsight]", "first-try-matters [certified]",
              "deepconf-low [hindsight]", "deepconf-high [hindsight]", "adaptive-consistency [certified]", "esc [hindsight]",
              "first-finish [certified]", "stopwise learned_exit (in-domain)", "oracle (one chain)", "oracle (chains)"):
        assert m in methods, m
    assert {r["epsilon"] for r in rows} == set(EPSILONS)
    for r in rows:
        assert r["kind"] in ("anchor", "stopwise", "oracle")
        if r["method"].endswith("[hindsight]"):
            assert r["test_risk"] <= r["epsilon"] + 1e-12 and not r["certified"] and r["tokens_saved"] >= 0
        if r["tokens_saved"] is None:
            assert r["setting"].startswith("too small") and r["min_epsilon"] > r["epsilon"]
    # the oracle bounds every method of its unit kind at the same epsilon (hindsight, per unit)
    for eps in EPSILONS:
        at = [r for r in rows if r["epsilon"] == eps]
        for kind in ("single", "multi"):
            o = next(r for r in at if r["kind"] == "oracle" and r["unit"] == kind)
            for r in at:
                if r["unit"] == kind and r["kind"] != "oracle" and r["tokens_saved"] is not None and r["test_risk"] <= eps:
                    assert r["tokens_saved"] <= o["tokens_saved"] + 1e-9, (r, o)


def test_small_sets_say_too_small():
    ts = read_trace_set(bundled_path("qwq_math52"))
    rows = compare_set(ts, epsilons=(0.01,))["rows"]
    certified = [r for r in rows if r["method"].endswith("[certified]") or r["kind"] == "stopwise"]
    assert certified and all(r["tokens_saved"] is None and "too small" in r["setting"] for r in certified)


def test_donors_share_no_question_and_transfer_row_is_the_headline():
    r1 = read_trace_set(bundled_path("r1_gsm8k"))
    qwq = read_trace_set(bundled_path("qwq_gsm8k"))
    math = read_trace_set(bundled_path("r1_math52"))
    assert donor_sets(r1, [r1, qwq, math]) == [math]
    rows = compare_set(r1, epsilons=(0.05,), donors=[math])["rows"]
    head = [r for r in rows if r["headline"]]
    assert len(head) == 1 and head[0]["method"] == "stopwise learned_exit (transfer)"
    assert head[0]["n_calibration"] > 280, "a probe trained on other questions keeps the whole calibration half"


def test_permuted_chains_keeps_each_question_s_chains(multi):
    assert permuted_chains(multi, 0) is multi
    p = permuted_chains(multi, 3)
    assert p.n_chains == multi.n_chains and np.array_equal(p.chain_counts, multi.chain_counts)
    a, b = multi.column("n_tokens"), p.column("n_tokens")
    for q in range(multi.n_questions):
        s, e = multi.question_offsets[q], multi.question_offsets[q + 1]
        assert sorted(a[s:e]) == sorted(b[s:e])
    assert not np.array_equal(a, b)
    assert p.column("sample_id").tolist() == [i for n in multi.chain_counts for i in range(n)]


def test_seeds_are_summarized(multi):
    res = compare_sets([multi], epsilons=(0.1,), seeds=2)
    assert [r["seed"] for r in res] == [0, 1]
    rows = summarize(res)
    ac = next(r for r in rows if r["method"] == "adaptive-consistency [hindsight]")
    assert ac["seeds"] == 2 and "tokens_saved_sd" in ac


def test_cli_compare_anchors_json(tmp_path):
    out = tmp_path / "anchors.json"
    r = subprocess.run([sys.executable, "-m", "stopwise.cli.main", "bench", "--compare", "anchors", "--traces",
                        bundled_path("r1_math52"), "--json", out], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "first-try-matters [hindsight]" in r.stdout and "too small" in r.stdout
    rows = json.loads(out.read_text())
    assert rows and all(set(ROW_KEYS) <= set(row) for row in rows)
    assert any(row["method"] == "stopwise learned_exit (transfer)" for row in rows)


def test_transfer_report_both_probes_on_the_target():
    """The probe trained on one set, certified and tested on another with no shared question, beside the
    target's own in-domain probe (synthetic sets: a unit test of the bookkeeping, not a result)."""
    from stopwise.evaluation.anchors import transfer_report
    from stopwise.errors import ConfigError

    src = synthetic_trace_set(160, 2, mean_tokens=200, seed=11, name="syn-src", id_prefix="s")
    tgt = synthetic_trace_set(160, 2, mean_tokens=200, seed=12, name="syn-tgt")
    rep = transfer_report(src, tgt, epsilons=(0.1,))
    names = list(rep["probes"])
    assert names == ["learned_exit (in-domain)", "learned_exit (from syn-src)"]
    assert rep["probes"][names[1]]["trained_on"] == ["syn-src"] and rep["probes"][names[0]]["trained_on"] == ["syn-tgt"]
    for p in rep["probes"].values():
        assert p["probes"] > 0 and 0.0 <= p["auroc"] <= 1.0
    methods = {r["method"] for r in rep["rows"]}
    assert set(names) <= methods and any(r["kind"] == "oracle" for r in rep["rows"])
    by = {r["method"]: r for r in rep["rows"]}
    # the transferred probe saw no target question, so its whole calibration half certifies it
    assert by[names[1]]["n_calibration"] > by[names[0]]["n_calibration"]
    with pytest.raises(ConfigError, match="shares questions"):
        transfer_report(tgt, tgt, epsilons=(0.1,))
