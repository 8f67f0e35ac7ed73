"""The reference replay driver on hand-built trace sets with known outcomes."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pytest

from stopwise.errors import StopwiseError
from stopwise.policies.base import (
    MISSING,
    Abstain,
    Escalate,
    Family,
    Final,
    Finished,
    Probe,
    ProbeResult,
    Spawn,
    Stop,
    Tokens,
)
from stopwise.policies.registry import get_family
from stopwise.replay import PolicyError, run_reference
from stopwise.traces.model import Provenance, TraceSet, trace_set_from_columns
from stopwise.traces.schema import CHAIN_COLUMNS, QUESTION_SCHEMA


def tiny_ts(questions: list[list[dict]], refs: list[int] | None = None) -> TraceSet:
    """A trace set from chain dicts: n_tokens, answer (class), probes [(pos, cls, lp, cost, cue)], ...

    Optional keys: finish_reason, token_logprobs, token_confidence, entropy,
    and ``null_probes`` (a list of probe columns to store as null).
    """
    q_rows = {f.name: [] for f in QUESTION_SCHEMA}
    rows: dict[str, list] = {c: [] for c in CHAIN_COLUMNS}
    for qi, chains in enumerate(questions):
        qid = f"q{qi}"
        q_rows["question_id"].append(qid)
        q_rows["question"].append(None)
        q_rows["reference"].append(None)
        q_rows["reference_class"].append(-1 if refs is None else refs[qi])
        q_rows["n_classes"].append(4)
        q_rows["class_answers"].append(None)
        q_rows["metadata"].append(None)
        for s, c in enumerate(chains):
            probes = c.get("probes")
            rec = {k: None for k in CHAIN_COLUMNS}
            rec.update(
                question_id=qid,
                sample_id=s,
                n_tokens=c["n_tokens"],
                finish_reason=c.get("finish_reason", "stop"),
                answer=None if c["answer"] < 0 else str(c["answer"]),
                answer_class=c["answer"],
                token_logprobs=c.get("token_logprobs"),
                token_confidence=c.get("token_confidence"),
                entropy=c.get("entropy"),
            )
            if probes is not None:
                rec["probe_position"] = [p[0] for p in probes]
                rec["probe_class"] = [p[1] for p in probes]
                rec["probe_answer"] = [None if p[1] is None or p[1] < 0 else str(p[1]) for p in probes]
                rec["probe_logprob"] = [p[2] if len(p) > 2 else None for p in probes]
                rec["probe_cost"] = [p[3] if len(p) > 3 else 0 for p in probes]
                rec["probe_cue"] = [p[4] if len(p) > 4 else "schedule" for p in probes]
                for col in c.get("null_probes", ()):
                    rec[col] = None
            for k in CHAIN_COLUMNS:
                rows[k].append(rec[k])
    return trace_set_from_columns("tiny", q_rows, rows, Provenance(source="test"))


# --- a scripted multi-chain family for driver semantics ------------------------------
class Scripted:
    """Replays a script: ``start`` actions, then a function of each event; records the events."""

    def __init__(self, start, react) -> None:  # noqa: ANN001
        self._start, self._react, self.events = start, react, []

    def start(self):  # noqa: ANN201
        return list(self._start)

    def on_event(self, ev):  # noqa: ANN001, ANN201
        self.events.append(ev)
        return list(self._react(ev, self) or [])


class ScriptedFamily(Family):
    name: ClassVar[str] = "scripted"
    kind: ClassVar[str] = "multi"

    def __init__(self, start, react, kind: str = "multi") -> None:  # noqa: ANN001
        self._s, self._r = start, react
        self.kind = kind  # type: ignore[misc]
        self.made: list[Scripted] = []

    @property
    def grid(self) -> np.ndarray:
        return np.array([0.0])

    def make(self, index: int, n_chains: int = 1):  # noqa: ANN201
        p = Scripted(self._s, self._r)
        self.made.append(p)
        return p

    def replay(self, ts):  # noqa: ANN001, ANN201
        raise NotImplementedError

    def full(self, ts):  # noqa: ANN001, ANN201
        n = ts.n_questions if self.kind == "multi" else ts.n_chains
        z = np.zeros(n, dtype=np.int64)
        return z.astype(np.int32) - 1, z, z, z, z.astype(np.int32)


def finals_on_last_finish(n: int):  # noqa: ANN201
    def react(ev, pol):  # noqa: ANN001, ANN202
        if isinstance(ev, Finished):
            pol.done = getattr(pol, "done", 0) + 1
            if pol.done == n:
                return [Final(ev.answer)]
        return []

    return react


CHAIN_A = {"n_tokens": 10, "answer": 2, "probes": [(3, 1, -0.1, 5), (6, 2, -0.2, 5), (10, 2, -0.01, 5)]}


# --- single-chain families on a known chain --------------------------------------------
def test_answer_convergence_known_chain() -> None:
    ts = tiny_ts([[CHAIN_A]], refs=[2])
    fam = get_family("answer_convergence")
    res = run_reference(fam, ts)
    k2 = list(fam.grid).index(2)
    k3 = list(fam.grid).index(3)
    # probes 1, 2, 2: two in a row at position 10, which is also the end
    assert (res.answer[0, k2], res.tokens[0, k2], res.probe_tokens[0, k2], res.latency[0, k2]) == (2, 10, 15, 25)
    # three never agree: runs to the end, paid for all three probes
    assert (res.answer[0, k3], res.tokens[0, k3], res.probe_tokens[0, k3]) == (2, 10, 15)
    assert res.chains[0].tolist() == [1] * len(fam.grid)
    assert res.correct_class.tolist() == [2]
    assert (res.answer_full[0], res.tokens_full[0], res.probe_tokens_full[0], res.latency_full[0]) == (2, 10, 0, 10)


def test_token_budget_known_chain() -> None:
    ts = tiny_ts([[CHAIN_A]])
    fam = get_family("token_budget")
    res = run_reference(fam, ts)
    by_budget = {int(b): k for k, b in enumerate(fam.grid)}
    # budget 64 > 10: runs to the end without probing
    assert (res.answer[0, by_budget[64]], res.tokens[0, by_budget[64]], res.probe_tokens[0, by_budget[64]]) == (2, 10, 0)

    # a chain longer than some budgets
    long = {"n_tokens": 300, "answer": 3, "probes": [(64, 1, 0.0, 7), (100, 2, 0.0, 7), (200, 3, 0.0, 7)]}
    res = run_reference(fam, tiny_ts([[long]]))
    assert (res.answer[0, by_budget[64]], res.tokens[0, by_budget[64]], res.probe_tokens[0, by_budget[64]]) == (1, 64, 7)
    assert (res.answer[0, by_budget[96]], res.tokens[0, by_budget[96]], res.probe_tokens[0, by_budget[96]]) == (2, 100, 7)
    assert (res.answer[0, by_budget[192]], res.tokens[0, by_budget[192]]) == (3, 200)
    assert (res.answer[0, by_budget[256]], res.tokens[0, by_budget[256]], res.probe_tokens[0, by_budget[256]]) == (3, 300, 0)


def test_first_candidate_and_confidence_known_chain() -> None:
    chain = {"n_tokens": 50, "answer": 1, "probes": [(10, -1, math.nan, 1), (20, 3, math.log(0.6), 1), (30, 1, math.log(0.97), 1), (40, -1, 0.0, 1)]}
    ts = tiny_ts([[chain]])
    fc = get_family("first_candidate")
    res = run_reference(fc, ts)
    r = {int(v): k for k, v in enumerate(fc.grid)}
    assert (res.answer[0, r[0]], res.tokens[0, r[0]], res.probe_tokens[0, r[0]]) == (3, 20, 2)
    assert (res.answer[0, r[1]], res.tokens[0, r[1]], res.probe_tokens[0, r[1]]) == (1, 30, 3)
    # the probe at the cut has no answer: that is what the user gets
    assert (res.answer[0, r[2]], res.tokens[0, r[2]]) == (MISSING, 40)
    assert (res.answer[0, r[3]], res.tokens[0, r[3]], res.probe_tokens[0, r[3]]) == (1, 50, 4)

    pc = get_family("probe_confidence")
    res = run_reference(pc, ts)
    t = {float(v): k for k, v in enumerate(pc.grid)}
    assert (res.answer[0, t[0.5]], res.tokens[0, t[0.5]]) == (3, 20)
    assert (res.answer[0, t[0.95]], res.tokens[0, t[0.95]]) == (1, 30)
    # the certain probe at 40 has no answer, so it does not count
    assert (res.answer[0, t[0.99]], res.tokens[0, t[0.99]], res.probe_tokens[0, t[0.99]]) == (1, 50, 4)


def test_cue_filter_and_duplicate_positions() -> None:
    chain = {
        "n_tokens": 40,
        "answer": 1,
        "probes": [(10, 2, 0.0, 3, "schedule"), (10, 2, 0.0, 4, "wait"), (20, 1, 0.0, 3, "schedule"), (30, 2, 0.0, 4, "wait")],
    }
    ts = tiny_ts([[chain]])
    k2 = list(get_family("answer_convergence").grid).index(2)
    # all cues: the two probes at 10 agree -> stop at 10 having paid both
    res = run_reference(get_family("answer_convergence"), ts)
    assert (res.answer[0, k2], res.tokens[0, k2], res.probe_tokens[0, k2]) == (2, 10, 7)
    # only "wait" probes: 2 at 10 and 2 at 30
    res = run_reference(get_family("answer_convergence", cues=["wait"]), ts)
    assert (res.answer[0, k2], res.tokens[0, k2], res.probe_tokens[0, k2]) == (2, 30, 8)
    # only "schedule": 2 then 1 never converge
    res = run_reference(get_family("answer_convergence", cues="schedule"), ts)
    assert (res.answer[0, k2], res.tokens[0, k2], res.probe_tokens[0, k2]) == (1, 40, 6)


def test_position_zero_probes_are_ignored() -> None:
    chain = {"n_tokens": 5, "answer": 1, "probes": [(0, 1, 0.0, 9), (5, 1, 0.0, 2)]}
    fam = get_family("first_candidate")
    res = run_reference(fam, tiny_ts([[chain]]))
    r0 = list(fam.grid).index(0)
    assert (res.tokens[0, r0], res.probe_tokens[0, r0]) == (5, 2)
    np.testing.assert_array_equal(fam.replay(tiny_ts([[chain]])).probe_tokens, res.probe_tokens)


def test_indices_select_units() -> None:
    ts = tiny_ts([[CHAIN_A, {"n_tokens": 4, "answer": 0}], [{"n_tokens": 7, "answer": 1}]])
    fam = get_family("answer_convergence")
    full = run_reference(fam, ts)
    part = run_reference(fam, ts, indices=[2, 0])
    np.testing.assert_array_equal(part.answer, full.answer[[2, 0]])
    np.testing.assert_array_equal(part.tokens_full, [7, 10])
    np.testing.assert_array_equal(part.unit_question, [1, 0])
    assert part.unit == "chain"


# --- driver semantics with scripted multi-chain policies ------------------------------------
def test_tokens_events_carry_scalars_and_finish() -> None:
    ts = tiny_ts([[{"n_tokens": 3, "answer": 2, "token_logprobs": [-0.5, -1.0, -2.0], "entropy": [0.1, None, 0.3]}]])
    fam = ScriptedFamily([Spawn(1)], finals_on_last_finish(1))
    res = run_reference(fam, ts)
    events = fam.made[0].events
    assert [type(e).__name__ for e in events] == ["Tokens", "Tokens", "Tokens", "Finished"]
    assert [e.position for e in events[:3]] == [1, 2, 3]
    assert [e.logprob for e in events[:3]] == [-0.5, -1.0, -2.0]
    assert events[0].entropy == pytest.approx(0.1) and math.isnan(events[1].entropy)
    assert all(math.isnan(e.confidence) for e in events[:3])
    assert events[3] == Finished(0, 3, 2, "stop")
    assert (res.answer[0, 0], res.tokens[0, 0], res.chains[0, 0], res.latency[0, 0]) == (2, 3, 1, 3)
    assert res.unit == "question"


def test_spawn_clock_latency_and_chain_order() -> None:
    # chain 0: 4 tokens, chain 1: 2 tokens, chain 2: 3 tokens
    q = [{"n_tokens": 4, "answer": 1}, {"n_tokens": 2, "answer": 2}, {"n_tokens": 3, "answer": 1}]
    ts = tiny_ts([q])

    def react(ev, pol):  # noqa: ANN001, ANN202
        if isinstance(ev, Finished):
            pol.fin = getattr(pol, "fin", []) + [ev.chain]
            if ev.chain == 1:
                return [Spawn(5)]  # only one more chain is logged
            if len(pol.fin) == 3:
                return [Final(ev.answer)]
        return []

    fam = ScriptedFamily([Spawn(2)], react)
    res = run_reference(fam, ts)
    ev = fam.made[0].events
    # within a tick chains advance in chain order
    assert [(e.chain, e.position) for e in ev[:4]] == [(0, 1), (1, 1), (0, 2), (1, 2)]
    # chain 2 spawned at clock 2 finishes at clock 5 after chain 0 (clock 4)
    assert [e.chain for e in ev if isinstance(e, Finished)] == [1, 0, 2]
    assert (res.answer[0, 0], res.tokens[0, 0], res.chains[0, 0], res.latency[0, 0]) == (1, 9, 3, 5)


def test_final_cancels_live_chains_and_probes_charge_latency() -> None:
    q = [
        {"n_tokens": 10, "answer": 1, "probes": [(2, 1, 0.0, 4)]},
        {"n_tokens": 10, "answer": 1, "probes": [(3, 1, 0.0, 100)]},
    ]
    ts = tiny_ts([q])

    def react(ev, pol):  # noqa: ANN001, ANN202
        if isinstance(ev, Tokens):
            return [Probe(ev.chain)]
        if isinstance(ev, ProbeResult) and ev.chain == 0:
            return [Stop(0, ev.answer)]
        if isinstance(ev, ProbeResult) and ev.chain == 1:
            return [Final(ev.answer), Spawn(1)]  # actions after a decision are ignored
        return []

    fam = ScriptedFamily([Spawn(2)], react)
    res = run_reference(fam, ts)
    # chain 0 stopped at 2 (+4 probe), chain 1 decided at 3 (+100 probe)
    assert (res.answer[0, 0], res.tokens[0, 0], res.probe_tokens[0, 0], res.chains[0, 0]) == (1, 5, 104, 2)
    assert res.latency[0, 0] == 103


def test_abstain_escalate_and_immediate_final() -> None:
    ts = tiny_ts([[{"n_tokens": 5, "answer": 1}]])
    res = run_reference(ScriptedFamily([Spawn(1)], lambda ev, p: [Abstain()] if ev.position == 2 else []), ts)
    assert (res.answer[0, 0], bool(res.abstained[0, 0]), res.tokens[0, 0]) == (MISSING, True, 2)
    res = run_reference(ScriptedFamily([Spawn(1)], lambda ev, p: [Escalate("big")] if ev.position == 3 else []), ts)
    assert (res.answer[0, 0], bool(res.abstained[0, 0]), res.tokens[0, 0]) == (MISSING, False, 3)
    res = run_reference(ScriptedFamily([Final(7)], lambda ev, p: []), ts)
    assert (res.answer[0, 0], res.tokens[0, 0], res.chains[0, 0], res.latency[0, 0]) == (7, 0, 0, 0)


def test_zero_token_chain_finishes_at_spawn() -> None:
    ts = tiny_ts([[{"n_tokens": 0, "answer": 3}]])
    fam = ScriptedFamily([Spawn(1)], finals_on_last_finish(1))
    res = run_reference(fam, ts)
    assert fam.made[0].events == [Finished(0, 0, 3, "stop")]
    assert (res.answer[0, 0], res.tokens[0, 0], res.chains[0, 0]) == (3, 0, 1)


def test_policy_without_decision_raises_naming_family() -> None:
    ts = tiny_ts([[{"n_tokens": 3, "answer": 1}]])
    with pytest.raises(PolicyError, match="scripted"):
        run_reference(ScriptedFamily([Spawn(1)], lambda ev, p: []), ts)
    with pytest.raises(PolicyError, match="scripted"):
        run_reference(ScriptedFamily([], lambda ev, p: []), ts)
    with pytest.raises(PolicyError, match="never drawn"):
        run_reference(ScriptedFamily([Spawn(1)], lambda ev, p: [Stop(4, 1)]), ts)
    assert issubclass(PolicyError, StopwiseError)


def test_single_kind_runs_chains_alone() -> None:
    ts = tiny_ts([[{"n_tokens": 3, "answer": 1}, {"n_tokens": 5, "answer": 2}]])
    fam = ScriptedFamily([Spawn(3)], finals_on_last_finish(1), kind="single")
    res = run_reference(fam, ts)
    assert res.unit == "chain"
    assert res.chains[:, 0].tolist() == [1, 1]
    assert res.answer[:, 0].tolist() == [1, 2]
    assert res.tokens[:, 0].tolist() == [3, 5]
