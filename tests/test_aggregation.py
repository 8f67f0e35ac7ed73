"""Voting and selection rules over k chains (majority, confidence- and reward-weighted, best-of-N, Best-of-Majority)."""

from __future__ import annotations

import numpy as np
import pytest

from stopwise.rules.aggregation import _pick, aggregation_report
from stopwise.data import bundled_path
from stopwise.errors import ConfigError
from stopwise.traces import read_trace_set
from stopwise.traces.synthetic import synthetic_trace_set


def test_rules_by_hand():
    c = np.array([1, 2, 2, 3, 1, 1])
    r = np.array([0.1, 0.9, 0.8, 5.0, 0.2, 0.3])
    conf = np.array([0.1, 5.0, 5.0, 0.1, 0.1, 0.1])
    assert _pick("majority", c, None, None, 0.2) == 1
    assert _pick("confidence_weighted", c, conf, None, 0.2) == 2
    assert _pick("confidence_top10", c, conf, None, 0.2) == 2  # the single most confident chain (ties: the first)
    assert _pick("best_of_n", c, None, r, 0.2) == 3
    # Best-of-Majority: answer 3 has 1/6 < 0.2 of the votes, so it cannot win on reward; among 1 and 2, 2 has the best chain
    assert _pick("best_of_majority", c, None, r, 0.2) == 2
    assert _pick("best_of_majority", c, None, r, 0.1) == 3
    assert _pick("reward_weighted", c, None, r, 0.2) == 3  # shifted weights: 3 gets 4.9, 2 gets 1.5, 1 gets 0.3
    assert _pick("best_of_n", np.array([-1, -1]), None, np.array([1.0, 2.0]), 0.2) == -1


def test_every_rule_equals_the_first_chain_at_k1_and_majority_matches_the_vote():
    ts = read_trace_set(bundled_path("qwen25math_math100"))
    r = aggregation_report(ts)
    rows = {x["rule"]: x["accuracy"] for x in r["rows"]}
    assert set(rows) == {"majority", "reward_weighted", "best_of_n", "best_of_majority"}
    assert len({acc[0] for acc in rows.values()}) == 1, "with one chain every rule returns that chain's answer"
    first = ts.chain_rank == 0
    assert rows["majority"][0] == pytest.approx(np.asarray(ts.column("correct", fill=False))[first].mean())
    assert r["ks"][-1] == int(ts.chain_counts.max())


def test_confidence_rules_need_token_confidence_and_single_chain_sets_are_refused():
    r = aggregation_report(read_trace_set(bundled_path("gsm8k_qwen05")))
    assert {"confidence_weighted", "confidence_top10"} <= {x["rule"] for x in r["rows"]}
    with pytest.raises(ConfigError, match="one chain per question"):
        aggregation_report(read_trace_set(bundled_path("r1_gsm8k")))
    ts = synthetic_trace_set(10, 3, seed=0)
    ts.chains = ts.chains.drop_columns(["correct"])
    with pytest.raises(ConfigError, match="no labels"):
        aggregation_report(ts)
