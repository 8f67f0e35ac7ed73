"""Weak-to-strong cascades: the RouteLLM loader, the losses, and the certified cascade on the real responses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stopwise.errors import TraceFormatError
from stopwise.rules.routing import GRID, cascade, load_routellm, router_losses, validate_cascade

from stopwise.data import ROUTING_DIR

# the real responses, bundled with the package (gzipped copies of ../shared/data files; see data/routing/README.md)
REAL = ROUTING_DIR / "routellm_gsm8k_responses.csv.gz"
GPT3 = ROUTING_DIR / "gsm8k_example_model_solutions.jsonl.gz"
HEADER = "prompt,weak,strong,weak_response,strong_response\n"


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "fixture_routing.csv"  # a hand-written fixture, not real data
    p.write_text(text)
    return p


def test_loader_errors_name_file_line_and_field(tmp_path):
    with pytest.raises(TraceFormatError, match=r"fixture_routing.csv:1: header"):
        load_routellm(write(tmp_path, "prompt,a,b\nx,1,2\n"))
    with pytest.raises(TraceFormatError, match=r"fixture_routing.csv:3: field 'strong': 'maybe' is not True or False"):
        load_routellm(write(tmp_path, HEADER + "q1,True,False,r,s\nq2,True,maybe,r,s\n"))
    with pytest.raises(TraceFormatError, match=r":2: 3 fields, expected 5"):
        load_routellm(write(tmp_path, HEADER + "q1,True,False\n"))
    with pytest.raises(TraceFormatError, match="not found"):
        load_routellm(tmp_path / "nope.csv")
    d = load_routellm(write(tmp_path, HEADER + '"multi\nline",True,False,"a\nb",s\n'))
    assert d.prompts == ["multi\nline"] and d.weak_ok.tolist() == [True] and d.question_ids[0].startswith("q-")


def test_losses_safe_end_and_monotone(tmp_path):
    d = load_routellm(write(tmp_path, HEADER + "a,False,True,x,y\nb,True,True,x,y\nc,False,False,x,y\n"))
    loss, kept = router_losses(d, np.array([0.9, 0.5, 0.1]))
    assert GRID[0] == 1.0 and GRID[-1] == 0.0
    assert not kept[:, 0].any() and (loss[:, 0] == 0).all()
    assert (np.diff(kept.astype(int), axis=1) >= 0).all(), "a lower threshold keeps at least as many weak answers"
    assert loss[0, -1] == 1 and loss[1].sum() == 0 and loss[2].sum() == 0  # only 'weak wrong, strong right' loses


def test_certified_cascade_on_routellm_gsm8k():
    r = cascade(load_routellm(REAL), epsilon=0.1)
    assert r["n_train"] + r["n_calibration"] + r["n_test"] == 1319
    assert r["certified"] and 0.55 < r["router_auroc"] < 1.0
    assert r["oracle_escalated"] <= r["escalated"] <= 1.0 and r["cost"] < 1.0
    assert r["accuracy_cascade"] >= r["accuracy_weak"]


@pytest.mark.validity
def test_cascade_guarantee_holds_where_the_naive_calibrator_fails():
    rows = {r["policy"]: r for r in validate_cascade(load_routellm(REAL), epsilon=0.15, draws=300, seed=1)}
    assert rows["cascade"]["consistent"], rows["cascade"]
    assert not rows["naive-control:cascade"]["consistent"], rows["naive-control:cascade"]


# --- cascades between two trace sets --------------------------------------------------------------------


def _synthetic_pair(n=120):
    from stopwise.traces.synthetic import synthetic_trace_set

    small = synthetic_trace_set(n, 4, p_correct=0.4, seed=3)  # a synthetic stand-in, not a real model
    large = synthetic_trace_set(n, 1, p_correct=0.7, seed=4)
    return small, large


def test_pair_trace_sets_matches_questions_and_counts_tokens():
    from stopwise.rules.routing import pair_trace_sets, subset_trace_set

    small, large = _synthetic_pair()
    qids = small.questions.column("question_id").to_pylist()
    large_part = subset_trace_set(large, qids[10:70][::-1])  # fewer questions, another order
    pair = pair_trace_sets(small, large_part, chains=2)
    assert pair.question_ids == qids[10:70] and pair.chains == 2
    s2 = subset_trace_set(small, pair.question_ids, 2)
    assert s2.n_chains == 120 and pair.weak_tokens.sum() == s2.column("n_tokens").sum()
    assert pair.strong_tokens.sum() == large_part.column("n_tokens").sum()
    ref = np.asarray(large_part.questions.column("reference_class").to_pylist())
    # one large chain: its correctness is the chain's own
    order = [large_part.questions.column("question_id").to_pylist().index(q) for q in pair.question_ids]
    assert pair.strong_ok.tolist() == (np.asarray(large_part.column("answer_class", fill=-1))[order] == ref[order]).tolist()
    assert set(pair.scores) >= {"vote_share", "vote_margin", "probe_agreement"}
    assert (pair.weak_probe_tokens > 0).all()


def test_pair_trace_sets_refuses_too_few_common_questions_and_unlabeled_sets():
    from stopwise.errors import ConfigError
    from stopwise.rules.routing import pair_trace_sets, subset_trace_set

    small, large = _synthetic_pair()
    few = subset_trace_set(large, small.questions.column("question_id").to_pylist()[:5])
    with pytest.raises(ConfigError, match="share 5 questions"):
        pair_trace_sets(small, few)


def test_trace_cascade_certifies_and_reports_costs():
    from stopwise.rules.routing import pair_trace_sets, trace_cascade

    small, large = _synthetic_pair(200)
    pair = pair_trace_sets(small, large)
    # four small chains cost 4x the large model's one: at half the price per token, every certified threshold
    # costs more than the large model alone on the calibration half, so nothing is deployed
    dear = trace_cascade(pair, score="vote_share", epsilon=0.1, delta=0.1, weak_token_price=0.5)
    assert dear["certified_up_to"] is not None and not dear["certified"] and dear["threshold"] is None
    assert dear["decision"] == "no saving: always use the large model"
    assert dear["cost"] == pytest.approx(dear["tokens_strong"]) and dear["escalated"] == 1.0 and dear["accuracy_loss"] == 0.0
    r = trace_cascade(pair, score="vote_share", epsilon=0.1, delta=0.1, weak_token_price=0.01)
    assert r["certified"] and r["n_calibration"] + r["n_test"] == 200
    # cost = 0.01 x small tokens + large tokens of the escalated questions, in large-model tokens
    assert r["cost"] == pytest.approx(0.01 * r["tokens_weak"] + r["tokens_cascade_strong"])
    assert r["tokens_cascade_strong"] <= r["tokens_strong"] and 0.0 <= r["escalated"] <= 1.0
    # the cheapest certified threshold: no more aggressive than the last one certified
    assert r["threshold"] >= r["certified_up_to"]
    curve = r["curve"]
    assert curve["accuracy"][0] == pytest.approx(r["accuracy_strong"]) and curve["cost"][0] == pytest.approx(r["cost_weak"] + r["cost_strong"])
    # the oracle escalates exactly where only the large model is right: never a loss, never a useless escalation
    assert r["oracle_escalated"] <= 1 - r["accuracy_weak"]
    with pytest.raises(Exception, match="not available"):
        trace_cascade(pair, score="nope")


def test_cascade_policy_file_loads_in_the_server_and_refuses_when_nothing_is_certified(tmp_path):
    import json

    from stopwise.errors import ConfigError
    from stopwise.rules.routing import cascade_policy
    from stopwise.server.app import load_policy
    from stopwise.traces.synthetic import synthetic_trace_set

    small, large = _synthetic_pair(400)
    # four small chains at 0.32 of a large token each cost more than the large model alone: nothing is deployed
    with pytest.raises(ConfigError, match="no saving: every certified keep-threshold .* costs more than the large model alone"):
        cascade_policy(small, large, chains=4, epsilon=0.2)
    doc = cascade_policy(small, large, chains=4, epsilon=0.2, weak_token_price=0.02)
    assert doc["family"] == "vote_margin_abstain" and doc["risk"] == "accuracy_loss_vs_large"
    assert doc["certificate"]["certified"] and doc["cascade"]["chains"] == 4
    assert doc["threshold"] == doc["grid"][doc["index"]]
    assert doc["cascade"]["tested_sequence"][doc["certificate"]["index"]] == doc["threshold"]
    path = tmp_path / "cascade.json"
    path.write_text(json.dumps(doc))
    lp = load_policy(str(path))
    assert lp.family.name == "vote_margin_abstain" and lp.threshold == doc["threshold"] and lp.epsilon == 0.2
    with pytest.raises(ConfigError, match="needs at least 2"):
        cascade_policy(small, large, chains=1)
    # a large model that is always right and a small one that is mostly wrong: every kept answer risks a loss
    always_right = synthetic_trace_set(400, 1, p_correct=1.0, p_missing=0.0, seed=4)
    with pytest.raises(ConfigError, match="always escalating is the only safe rule"):
        cascade_policy(synthetic_trace_set(400, 4, p_correct=0.05, seed=3), always_right, chains=2, epsilon=0.01)


@pytest.mark.validity
def test_bundled_small_to_large_cascade_guarantee_holds_where_the_naive_calibrator_fails():
    """The 0.5B-to-1.5B cascade over 300 random calibration halves of the bundled pair, at epsilon 0.1: with one small
    chain scored by its forced-answer probability (a continuous score: the plug-in threshold overshoots), and with the
    vote margin over 4 chains (five distinct values: the plug-in control has no room to fail there)."""
    from stopwise.data import bundled_path
    from stopwise.rules.routing import pair_trace_sets, validate_trace_cascade
    from stopwise.traces import read_trace_set

    small, large = read_trace_set(bundled_path("gsm8k_qwen05")), read_trace_set(bundled_path("gsm8k_qwen15"))
    one = pair_trace_sets(small, large, chains=1)
    rows = {r["policy"]: r for r in validate_trace_cascade(one, score="probe_confidence", epsilon=0.1, draws=300, seed=1)}
    ltt, naive = rows["cascade:probe_confidence"], rows["naive-control:cascade:probe_confidence"]
    assert ltt["draws"] == 300 and ltt["consistent"], ltt
    assert not naive["consistent"], naive
    four = pair_trace_sets(small, large)
    rows = {r["policy"]: r for r in validate_trace_cascade(four, score="vote_margin", epsilon=0.1, draws=300, seed=1)}
    assert rows["cascade:vote_margin"]["consistent"]


def test_gsm8k_solutions_loader_and_errors(tmp_path):
    import json

    from stopwise.errors import ConfigError
    from stopwise.rules.routing import load_gsm8k_solutions, load_routing_data

    p = tmp_path / "fixture_solutions.jsonl"  # hand-written fixture in the example_model_solutions.jsonl layout
    rec = {"question": "1+1?", "ground_truth": "A: 2"}
    for k in ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification"):
        rec[k] = {"is_correct": k.startswith("175"), "solution": f"{k} says 2"}
    p.write_text(json.dumps(rec) + "\n" + json.dumps(rec | {"question": "2+2?"}) + "\n")
    d = load_routing_data(p, weak="6b_finetuning", strong="175b_verification")
    assert d.weak == "6b_finetuning" and d.weak_ok.tolist() == [False, False] and d.strong_ok.tolist() == [True, True]
    assert d.prompts == ["1+1?", "2+2?"] and d.weak_text[0] == "6b_finetuning says 2"
    bad = dict(rec)
    bad["175b_verification"] = {"is_correct": "yes", "solution": "x"}
    p.write_text(json.dumps(rec) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(TraceFormatError, match=r"fixture_solutions.jsonl:2: field '175b_verification'"):
        load_gsm8k_solutions(p)
    p.write_text("{not json\n")
    with pytest.raises(TraceFormatError, match=r":1: not JSON"):
        load_gsm8k_solutions(p)
    with pytest.raises(ConfigError, match="is not one of"):
        load_gsm8k_solutions(p, weak="7b")
    with pytest.raises(ConfigError, match="RouteLLM CSV names its own two models"):
        load_routing_data(tmp_path / "x.csv", weak="6b_finetuning")


def test_certified_cascade_gpt3_6b_to_175b():
    from stopwise.rules.routing import load_gsm8k_solutions

    r = cascade(load_gsm8k_solutions(GPT3), epsilon=0.1)
    assert r["weak_cost"] == 6.0 / 175.0
    assert r["n_train"] + r["n_calibration"] + r["n_test"] == 1319
    assert r["certified"] and r["accuracy_strong"] > r["accuracy_weak"]
    assert r["oracle_escalated"] <= r["escalated"] <= 1.0
