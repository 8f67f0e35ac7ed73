"""The decision rows of `stopwise bench` (abstention, answer sets, selection, cascades) and their plots."""

from __future__ import annotations

import pytest

from stopwise.data import bundled_path, bundled_routing_paths
from stopwise.evaluation.decisions import decision_rows, plot_decisions
from stopwise.traces import read_trace_set
from stopwise.traces.synthetic import synthetic_trace_set


def test_rows_per_set_and_cascades(tmp_path):
    ts = read_trace_set(bundled_path("qwen25math_math100"))
    small = synthetic_trace_set(120, 4, p_correct=0.4, seed=3)  # synthetic stand-ins for a model pair
    large = synthetic_trace_set(120, 1, p_correct=0.7, seed=4)
    rows = decision_rows([ts], epsilon=0.1, cascade_pairs=[(small, large)], routing_paths=bundled_routing_paths())
    kinds = [(r["kind"], r["data"]) for r in rows]
    assert ("answer_sets", ts.name) in kinds and ("selection", ts.name) in kinds
    assert {r["method"] for r in rows if r["kind"] == "abstention"} == {"vote_share", "vote_margin", "probe_agreement", "learned_probe"}
    casc = [r for r in rows if r["kind"] == "cascade"]
    methods = {r["method"] for r in casc}
    assert {"vote_margin, 4 chains", "probe_agreement, 1 chains", "vote_margin, 2 chains"} <= methods
    assert any(r["data"] == "routellm_gsm8k_responses" for r in casc), "the bundled RouteLLM data gives a cascade row"
    for r in casc:
        assert r["accuracy_oracle"] >= max(r["accuracy_strong"], r["accuracy_weak"]) - 1e-12
        assert len(r["curve"]["cost"]) == len(r["curve"]["accuracy"])
    for r in rows:
        if r["kind"] == "abstention" and r["certified"]:
            assert 0 < r["coverage"] <= 1
    written = plot_decisions(rows, tmp_path)
    assert {p.name for p in written} == {"risk_coverage.png", "cost_accuracy.png"}
    assert all(p.stat().st_size > 5000 for p in written)


def test_unlabeled_sets_give_no_rows():
    ts = synthetic_trace_set(30, 2, seed=0)
    ts.chains = ts.chains.drop_columns(["correct"])
    assert decision_rows([ts]) == []


@pytest.mark.parametrize("bad", [0.0, 1.0])
def test_bad_levels_are_refused(bad):
    from stopwise.errors import ConfigError

    with pytest.raises(ConfigError, match="epsilon must lie strictly between 0 and 1"):
        decision_rows([read_trace_set(bundled_path("qwq_gsm8k"))], epsilon=bad)
