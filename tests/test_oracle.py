"""Hindsight oracles on hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest

from stopwise.errors import ConfigError, UnknownNameError
from stopwise.evaluation.oracle import (
    chain_oracle_positions,
    epsilon_oracle,
    loss_matrix,
    majority_prefix,
    oracle_savings,
    vote_oracle_chains,
)
from stopwise.policies.base import ReplayResult
from stopwise.policies.registry import get_family
from stopwise.traces.model import Provenance, TraceSet, trace_set_from_columns
from stopwise.traces.schema import CHAIN_COLUMNS, QUESTION_SCHEMA
from stopwise.traces.synthetic import synthetic_trace_set


def make_ts(questions: list[list[tuple[int, int, list[tuple[int, int]] | None]]]) -> TraceSet:
    """Questions of chains ``(n_tokens, answer_class, [(probe position, probe class), ...])``."""
    q_rows = {f.name: [] for f in QUESTION_SCHEMA}
    rows: dict[str, list] = {c: [] for c in CHAIN_COLUMNS}
    for qi, chains in enumerate(questions):
        for k, v in dict(question_id=f"q{qi}", question=None, reference=None, reference_class=0, n_classes=3, class_answers=None, metadata=None).items():
            q_rows[k].append(v)
        for s, (n, ans, probes) in enumerate(chains):
            rec = {k: None for k in CHAIN_COLUMNS}
            rec.update(question_id=f"q{qi}", sample_id=s, n_tokens=n, answer_class=ans)
            if probes is not None:
                rec.update(
                    probe_position=[p for p, _ in probes],
                    probe_class=[c for _, c in probes],
                    probe_cost=[1] * len(probes),
                )
            for k in CHAIN_COLUMNS:
                rows[k].append(rec[k])
    return trace_set_from_columns("oracle", q_rows, rows, Provenance(source="test"))


# --- (a) chains --------------------------------------------------------------------------
def test_chain_oracle_positions() -> None:
    ts = make_ts(
        [
            [
                (100, 1, [(10, 2), (20, 1), (30, -1), (40, 1), (50, 1), (100, 1)]),  # settles at 40
                (100, 1, [(10, 1), (20, 1), (100, 1)]),  # right from the first probe
                (100, 1, [(10, 1), (20, 1), (90, 2)]),  # the last probe disagrees: no early point
                (100, -1, [(10, -1), (20, -1)]),  # missing final answer
                (60, 2, None),  # no probes
                (50, 0, [(0, 0), (25, 0)]),  # position-0 probes are not usable
            ]
        ]
    )
    assert chain_oracle_positions(ts).tolist() == [40, 10, 100, 100, 60, 25]


# --- (b) votes -----------------------------------------------------------------------------
def test_majority_prefix_ties_and_missing() -> None:
    assert majority_prefix(np.array([-1, -1, 3, 1, 1])).tolist() == [-1, -1, 3, 3, 1]
    assert majority_prefix(np.array([-1, -1])).tolist() == [-1, -1]
    assert majority_prefix(np.array([], dtype=int)).tolist() == []


def test_vote_oracle_chains() -> None:
    ts = make_ts(
        [
            [(10, 1, None), (10, 1, None), (10, 2, None), (10, 1, None)],  # 1 from the first chain
            [(10, 2, None), (10, 1, None), (10, 1, None), (10, 1, None)],  # 2,2(tie->2),1,1: k = 3
            [(10, 2, None), (10, 1, None), (10, 1, None), (10, 2, None)],  # ends 2-2 tie -> 2; k = 4
            [(10, -1, None), (10, -1, None)],  # nothing votes: -1 throughout
            [(10, -1, None), (10, 3, None)],  # -1 then 3: k = 2
        ]
    )
    assert vote_oracle_chains(ts).tolist() == [1, 3, 4, 1, 2]


def test_oracle_savings_fractions() -> None:
    ts = make_ts(
        [
            [(100, 1, [(25, 1), (100, 1)]), (100, 1, [(50, 2), (75, 1), (100, 1)])],
            [(200, 2, [(200, 2)])],
        ]
    )
    s = oracle_savings(ts)
    assert s["tokens_full"] == 400
    assert s["chain_tokens"] == 25 + 75 + 200
    assert s["chain_saved"] == pytest.approx(1 - 300 / 400)
    assert s["vote_chains"] == 2 and s["vote_tokens"] == 300
    assert s["vote_saved"] == pytest.approx(0.25)


def test_chain_oracle_on_synthetic_set() -> None:
    ts = synthetic_trace_set(40, 3, mean_tokens=300, seed=11)
    positions = chain_oracle_positions(ts)
    n_tok = ts.column("n_tokens")
    final = ts.column("answer_class")
    off, pos = ts.list_column("probe_position")
    _, cls = ts.list_column("probe_class")
    for j in range(ts.n_chains):
        p, c = pos[off[j] : off[j + 1]], cls[off[j] : off[j + 1]]
        if positions[j] < n_tok[j]:
            # from the oracle point on, every probe answers the final class ...
            assert final[j] != -1 and (c[p >= positions[j]] == final[j]).all()
            # ... and the probe just before it does not
            before = c[p < positions[j]]
            assert len(before) == 0 or before[-1] != final[j]
        else:
            # synthetic chains end with a probe at n_tokens answering the final class
            assert final[j] == -1 or len(c) < 2 or c[-2] != final[j]
    assert 0 < oracle_savings(ts)["chain_saved"] < 1


# --- (c) epsilon oracle ---------------------------------------------------------------------
def fake_result(cost: list[list[int]], answer: list[list[int]], full_cost: list[int], full_answer: list[int]) -> ReplayResult:
    cost_a = np.array(cost, dtype=np.int64)
    u, g = cost_a.shape
    z = np.zeros((u, g), dtype=np.int64)
    return ReplayResult(
        family="fake",
        grid=np.arange(g),
        unit="chain",
        unit_question=np.arange(u),
        answer=np.array(answer, dtype=np.int32),
        abstained=np.zeros((u, g), dtype=bool),
        tokens=cost_a,
        probe_tokens=z,
        latency=cost_a,
        chains=np.ones((u, g), dtype=np.int32),
        answer_full=np.array(full_answer, dtype=np.int32),
        tokens_full=np.array(full_cost, dtype=np.int64),
        probe_tokens_full=np.zeros(u, dtype=np.int64),
        latency_full=np.array(full_cost, dtype=np.int64),
        chains_full=np.ones(u, dtype=np.int32),
        correct_class=np.array(full_answer, dtype=np.int32),
    )


def test_epsilon_oracle_hand_case() -> None:
    # four units, full cost 100 each, answer 1; grid columns cost 80 and 20
    res = fake_result(
        cost=[[80, 20], [80, 20], [80, 20], [90, 10]],
        answer=[[1, 1], [1, 2], [2, 2], [1, 2]],
        full_cost=[100, 100, 100, 100],
        full_answer=[1, 1, 1, 1],
    )
    out = epsilon_oracle(res, 0.0)
    # zero loss: unit0 -> 20, unit1 -> 80, unit2 -> 100 (full), unit3 -> 90
    assert out["hindsight_saved"] == pytest.approx(1 - 290 / 400)
    assert out["hindsight_loss"] == 0.0
    assert out["grid_index"] is None and out["grid_saved"] == 0.0  # every column disagrees somewhere
    assert out["saved"] == out["hindsight_saved"]

    # epsilon 0.25 buys one lossy step: the best is unit3 (90 -> 10 saves 80) or unit2 (100 -> 20 saves 80)
    out = epsilon_oracle(res, 0.25)
    assert out["hindsight_saved"] == pytest.approx(1 - (290 - 80) / 400)
    assert out["hindsight_loss"] == pytest.approx(0.25)
    # column 0 has mean loss 0.25 and cost 330
    assert out["grid_index"] == 0 and out["grid_saved"] == pytest.approx(1 - 330 / 400)

    out = epsilon_oracle(res, 1.0)
    assert out["hindsight_saved"] == pytest.approx(1 - 70 / 400)
    assert out["grid_index"] == 1 and out["grid_saved"] == pytest.approx(1 - 70 / 400)


def test_epsilon_oracle_fractional_losses_follow_the_hull() -> None:
    # one unit; options (loss, cost): (0.2, 60), (0.5, 50), (1.0, 0) against full 100
    res = fake_result(cost=[[60, 50, 0]], answer=[[1, 1, 1]], full_cost=[100], full_answer=[1])
    losses = np.array([[0.2, 0.5, 1.0]])
    assert epsilon_oracle(res, 0.1, losses)["hindsight_saved"] == 0.0
    assert epsilon_oracle(res, 0.2, losses)["hindsight_saved"] == pytest.approx(0.4)
    # (0.5, 50) lies under the hull from (0.2, 40 saved) to (1.0, 100 saved): never taken alone
    assert epsilon_oracle(res, 0.6, losses)["hindsight_saved"] == pytest.approx(0.4)
    assert epsilon_oracle(res, 1.0, losses)["hindsight_saved"] == pytest.approx(1.0)


def test_epsilon_oracle_monotone_and_bounded_on_replay() -> None:
    res = get_family("answer_convergence").replay(synthetic_trace_set(30, 2, mean_tokens=300, seed=2))
    prev = -np.inf
    for eps in (0.0, 0.02, 0.05, 0.1, 0.3, 1.0):
        out = epsilon_oracle(res, eps)
        assert out["hindsight_loss"] <= eps + 1e-12
        assert out["saved"] >= prev - 1e-12
        assert out["saved"] <= 1.0
        prev = out["saved"]
        if out["grid_index"] is not None:
            assert loss_matrix(res)[:, out["grid_index"]].mean() <= eps + 1e-12


def test_loss_matrix_and_errors() -> None:
    res = fake_result(cost=[[1, 1]], answer=[[2, -1]], full_cost=[5], full_answer=[2])
    assert loss_matrix(res).tolist() == [[0.0, 1.0]]
    assert loss_matrix(res, "accuracy").tolist() == [[0.0, 1.0]]
    res.correct_class[:] = 3  # full compute wrong: no accuracy loss possible
    assert loss_matrix(res, "accuracy").tolist() == [[0.0, 0.0]]
    with pytest.raises(UnknownNameError, match="unknown loss"):
        loss_matrix(res, "regret")
    with pytest.raises(ConfigError, match="shape"):
        loss_matrix(res, np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="epsilon"):
        epsilon_oracle(res, -0.1)
