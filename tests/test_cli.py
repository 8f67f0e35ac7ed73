"""The CLI end to end through its entry point, on bundled real sets."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stopwise.data import bundled_path, bundled_paths

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("STOPWISE_UPDATE_GOLDEN") == "1"


def run(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "stopwise.cli.main", *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"stopwise {' '.join(map(str, args))} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def test_bundled_sets_are_present():
    names = {p.name for p in bundled_paths()}
    assert {"qwq_gsm8k", "r1_gsm8k", "dsq_gsm8k", "qwen25math_math100"} <= names
    assert len(names) >= 15


def test_inspect_reports_text_probes_and_first_candidate(tmp_path):
    out = tmp_path / "inspect.json"
    r = run("inspect", bundled_path("qwq_gsm8k"), bundled_path("r1_gsm8k"), "--json", out)
    assert "first candidate answer" in r.stdout and "probes per chain" in r.stdout
    summaries = json.loads(out.read_text())
    for s in summaries:
        assert s["questions"] == 582 and s["chains"] == 582
        assert s["probes_per_chain"]["median"] > 5
        assert 0.0 < s["first_candidate_share"]["median"] < 1.0
        assert s["accuracy_one_chain"] > 0.9
        assert s["families"]["first_candidate"] == "yes"


def _rounded(rows):
    out = []
    for r in rows:
        out.append({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})
    return out


@pytest.mark.parametrize("name", ["qwq_gsm8k", "qwen25math_math100"])
def test_bench_golden(tmp_path, name):
    """The bench rows on a bundled set with a fixed seed match the golden file."""
    out = tmp_path / "rows.json"
    report = tmp_path / "report"
    r = run("bench", "--traces", bundled_path(name), "--seed", "0", "--json", out, "--report", report)
    assert name in r.stdout
    rows = _rounded(json.loads(out.read_text()))
    keys = {"trace_set", "policy", "threshold", "certified", "guarantee", "epsilon", "delta", "n_calibration",
            "test_risk", "accuracy_full", "accuracy_policy", "tokens_saved", "chains_saved", "oracle_fraction"}
    assert rows and all(keys <= set(row) for row in rows)
    assert (report / "index.html").is_file() and (report / f"{name}.png").stat().st_size > 1000
    golden = GOLDEN / f"bench_{name}.json"
    if UPDATE or not golden.exists():
        if not UPDATE:
            pytest.fail(f"golden file {golden} missing; run with STOPWISE_UPDATE_GOLDEN=1 to create it")
        golden.write_text(json.dumps(rows, indent=1) + "\n")
    assert rows == json.loads(golden.read_text())


def test_bench_certifies_on_qwq_and_never_exceeds_full_tokens(tmp_path):
    out = tmp_path / "rows.json"
    run("bench", "--traces", bundled_path("qwq_gsm8k"), "--json", out)
    rows = {r["policy"]: r for r in json.loads(out.read_text())}
    assert rows["first_candidate"]["certified"]
    assert rows["first_candidate"]["tokens_saved"] > 0.1
    for r in rows.values():
        # learned_exit calibrates on the calibration half less its training role
        assert r["tokens_saved"] <= 1.0 and r["n_calibration"] > (150 if r["policy"] == "learned_exit" else 250)


def test_calibrate_writes_policy_file_and_replay(tmp_path):
    pf = tmp_path / "policy.json"
    r = run("calibrate", "--traces", bundled_path("r1_gsm8k"), "--policy", "answer_convergence", "--epsilon", "0.05", "--out", pf)
    assert "smallest certifiable epsilon" in r.stdout
    doc = json.loads(pf.read_text())
    assert doc["family"] == "answer_convergence" and doc["certificate"]["guarantee"] == "pac"
    assert doc["certificate"]["n"] > 250 and doc["trace_set"]["content_hash"]
    assert set(doc["conditions"]) >= {"model", "tokenizer", "sampling", "forcing_string", "probe_schedule", "logprob_convention"}
    r = run("replay", "--traces", bundled_path("r1_gsm8k"), "--policy", "answer_convergence")
    assert "tokens saved" in r.stdout


def test_a_certified_rule_that_costs_more_than_full_compute_is_not_deployed(tmp_path):
    """chain_sum_qwen05: answer_convergence is certified, but its forced-answer probes cost more than the chain
    saves (plain LTT's setting cost 61.6% more than full compute on the test half). calibrate says so, writes full
    compute, and serve refuses the file; --select aggressive still gives plain Learn-then-Test's choice."""
    pf = tmp_path / "ac.json"
    r = run("calibrate", "--traces", bundled_path("chain_sum_qwen05"), "--policy", "answer_convergence", "--out", pf)
    assert "no saving: keep full compute" in " ".join(r.stdout.split())
    doc = json.loads(pf.read_text())
    sel = doc["selection"]
    assert doc["index"] is None and doc["certificate"]["certified"] and sel["decision"] == "no saving: keep full compute"
    assert sel["certified_up_to_index"] is not None and sel["full_compute_cost_per_question"] > 0
    r = run("serve", "--policy", pf, "--port", "0", check=False)
    assert r.returncode != 0 and "cost more than full compute" in " ".join(r.stderr.split())
    agg = tmp_path / "agg.json"
    run("calibrate", "--traces", bundled_path("chain_sum_qwen05"), "--policy", "answer_convergence", "--select", "aggressive", "--out", agg)
    d2 = json.loads(agg.read_text())
    assert d2["index"] == sel["certified_up_to_index"] and d2["selection"]["calibration_saved"] < 0


def test_bench_deploys_only_what_pays_and_recommends_one_row(tmp_path):
    """The bundled logprob corpora, where forced-answer probes cost about as much as the chain: no certified row
    loses tokens on the test half, and each set has exactly one recommended row, chosen on the calibration half."""
    out = tmp_path / "rows.json"
    r = run("bench", "--traces", bundled_path("chain_sum_qwen05"), "--traces", bundled_path("gsm8k_qwen05"), "--json", out)
    rows = json.loads(out.read_text())
    for name in ("chain_sum_qwen05", "gsm8k_qwen05"):
        rs = [x for x in rows if x["trace_set"] == name]
        assert not [x["policy"] for x in rs if x["certified"] and x["tokens_saved"] < -0.01]
        rec = [x for x in rs if x["recommended"]]
        assert len(rec) == 1 and rec[0]["calibration_saved"] == max(x["calibration_saved"] for x in rs if x["certified"])
        assert any(x["policy"] == "full_compute" and x["certified"] and x["tokens_saved"] == 0 for x in rs)
        # the families whose certified settings all lose are shown as such, not as a losing row
        assert any(x["decision"] == "no saving: keep full compute" and not x["certified"] and x["tokens_saved"] == 0 for x in rs)
    assert "recommended" in r.stdout and "no saving" in r.stdout


def test_unknown_policy_and_unsupported_policy_exit_2(tmp_path):
    r = run("calibrate", "--traces", bundled_path("r1_gsm8k"), "--policy", "answer_convergnce", "--out", tmp_path / "p.json", check=False)
    assert r.returncode == 2 and "did you mean 'answer_convergence'" in r.stderr
    r = run("replay", "--traces", bundled_path("r1_gsm8k"), "--policy", "deepconf_online", check=False)
    assert r.returncode == 2 and "token_confidence" in r.stderr
    r = run("inspect", tmp_path / "nope", check=False)
    assert r.returncode == 2 and "not found" in r.stderr


def test_validate_json_rows(tmp_path):
    out = tmp_path / "v.json"
    run("validate", "--traces", bundled_path("qwq_math52"), "--draws", "200", "--json", out)
    rows = json.loads(out.read_text())
    keys = {"policy", "risk", "epsilon", "delta", "n_calibration", "draws", "violation_frequency", "ci_low", "ci_high", "consistent"}
    assert all(keys <= set(r) for r in rows)
    naive = [r for r in rows if r["policy"].startswith("naive-control") or r["policy"] == "synthetic-control:naive"]
    assert any(not r["consistent"] for r in naive)
    assert all(r["consistent"] for r in rows if r["policy"] in ("first_candidate", "answer_convergence", "token_budget", "synthetic-control:ltt"))
    assert all(r["verdict"] == "pass" for r in rows if not r["policy"].startswith(("naive-control", "synthetic-control:naive")))
    assert next(r for r in rows if r["policy"] == "synthetic-control:naive")["verdict"] == "control rejected"


def test_validate_fails_and_names_the_family_when_the_calibrator_is_broken(tmp_path):
    """The default suite's check that the guarantee holds: validate exits 0 with Learn-then-Test, and exits 1,
    naming each family, when the plug-in rule (no correction) is put in its place."""
    good = run("validate", "--traces", bundled_path("qwq_math52"), "--draws", "200")
    assert good.returncode == 0 and "validate: PASS" in good.stdout
    bad = run("validate", "--traces", bundled_path("qwq_math52"), "--draws", "200", "--calibrator", "naive", check=False)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    failed = [line for line in bad.stderr.splitlines() if line.startswith("validate: FAIL")]
    assert any("qwq_math52 / first_candidate: violation frequency" in line for line in failed), bad.stderr
    assert "exceeds delta 0.1" in bad.stderr and "validate: PASS" not in bad.stdout


def test_validate_decisions_abstain_sets_select_cascade(tmp_path):
    out = tmp_path / "v.json"
    r = run("validate", "--decision", "abstain", "--decision", "sets", "--decision", "select", "--decision", "cascade",
            "--traces", bundled_path("qwen25math_math100"), "--draws", "20", "--epsilon", "0.1", "--json", out)
    assert "guarantees in expectation" in r.stdout
    rows = json.loads(out.read_text())
    policies = {x.get("policy") for x in rows}
    assert {"abstain:vote_share", "naive-control:abstain:vote_share", "cascade", "naive-control:cascade"} <= policies
    checks = [x["check"] for x in rows if "check" in x]
    assert any(c.startswith("answer sets") for c in checks) and any(c.startswith("selection") for c in checks)
    assert all(x["draws"] == 20 for x in rows)
