"""Importers: stopwise JSONL, grouped multi-sample, reasoning text; bad input errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stopwise.errors import ConfigError, TraceFormatError
from stopwise.traces import read_trace_set, write_trace_set
from stopwise.traces.importers import import_traces


def chain(qid="q1", sid=0, **kw):
    rec = {"question_id": qid, "sample_id": sid, "question": "What is 2+2?", "reference": "4", "text": "2+2 = 4. The answer is 4."}
    rec.update(kw)
    return rec


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def imp(path, checker, **kw):
    return import_traces([path], name="t", tokenizer="regex", checker=checker, **kw)


# --- stopwise JSONL --------------------------------------------------------------


def test_stopwise_jsonl_full_record(tmp_path, checker):
    lp = {"tokens": ["The", " answer", " is", " 4"], "token_logprobs": [-0.1, -0.2, -0.3, -0.05],
          "top_logprobs": [{"The": -0.1, "A": -2.5}, {" answer": -0.2}, {" is": -0.3}, {" 4": -0.05, " 5": -3.0}]}
    recs = [
        chain(sid=0, logprobs=lp, answer="4", finish_reason="stop", reward=0.5, custom_field={"a": 1},
              probes=[{"position": 2, "answer": "5", "logprob": -1.2, "cost": 20, "cue": "schedule"},
                      {"position": 4, "answer": "4.0", "logprob": -0.1, "cost": 20}]),
        chain(sid=1, text="I think it is 5", answer="5"),
        chain(qid="q2", sid=0, question="3*3?", reference="9", text="so \\boxed{9}"),
    ]
    ts = imp(write_jsonl(tmp_path / "a.jsonl", recs), checker)
    assert ts.n_questions == 2 and ts.n_chains == 3
    c = ts.chains.to_pylist()
    assert c[0]["n_tokens"] == 4 and c[0]["top_logprobs"][0] == pytest.approx([-0.1, -2.5])
    assert c[0]["top_tokens"][3] == [" 4", " 5"]
    # "4" and "4.0" share a class; "5" is another class; the reference is class of "4"
    assert c[0]["probe_class"][1] == c[0]["answer_class"] != c[0]["probe_class"][0]
    assert c[1]["answer_class"] == c[0]["probe_class"][0]
    assert c[0]["correct"] is True and c[1]["correct"] is False and c[2]["correct"] is True
    assert json.loads(c[0]["metadata"])["custom_field"] == {"a": 1}
    assert c[2]["answer"] == "9"  # extracted from text
    assert ts.has("probe_logprob") and not ts.has("entropy")


def test_answers_clustered_with_missing(tmp_path, checker):
    recs = [chain(sid=0, text="no idea", answer=None), chain(sid=1, text="hmm", answer=None), chain(sid=2, answer="4")]
    ts = imp(write_jsonl(tmp_path / "a.jsonl", recs), checker)
    cls = ts.column("answer_class").tolist()
    assert cls[0] == cls[1] == -1 and cls[2] >= 0
    assert ts.column("correct").tolist() == [False, False, True]


BAD_CASES = [
    ("{not json", 1, None, "invalid JSON"),
    ('["a list"]', 1, None, "expected a JSON object"),
    ({"sample_id": 0, "text": "x"}, 1, "question_id", "required but missing"),
    ({"question_id": "q", "sample_id": "zero", "text": "x"}, 1, "sample_id", "expected int"),
    ({"question_id": "q", "sample_id": -1, "text": "x"}, 1, "sample_id", ">= 0"),
    ({"question_id": "q", "sample_id": 0, "text": 5}, 1, "text", "expected str"),
    ({"question_id": "q", "sample_id": 0}, 1, "text", "needs 'text' or 'answer'"),
    ({"question_id": "q", "sample_id": 0, "text": "x", "logprobs": {"tokens": ["a"], "token_logprobs": [-0.1, -0.2]}}, 1, "logprobs.token_logprobs", "2 entries for 1 tokens"),
    ({"question_id": "q", "sample_id": 0, "text": "x", "logprobs": {"tokens": ["a"], "token_logprobs": ["x"]}}, 1, r"logprobs.token_logprobs\[0\]", "expected a number"),
    ({"question_id": "q", "sample_id": 0, "text": "x", "n_tokens": 3, "logprobs": {"tokens": ["a"]}}, 1, "n_tokens", "is 3 but"),
    ({"question_id": "q", "sample_id": 0, "text": "x", "n_tokens": 3, "probes": [{"position": 9, "answer": "1"}]}, 1, r"probes\[0\].position", "outside 0..3"),
    ({"question_id": "q", "sample_id": 0, "text": "x", "n_tokens": 3, "probes": [{"position": 2}, {"position": 1}]}, 1, r"probes\[1\].position", "sorted"),
    ({"question_id": "q", "sample_id": 0, "text": "x", "n_tokens": 3, "probes": [{"position": 1, "cost": -3}]}, 1, r"probes\[0\].cost", "non-negative"),
    ({"question_id": "q", "sample_id": 0, "text": "x", "correct": "yes"}, 1, "correct", "expected bool"),
]


@pytest.mark.parametrize("record,line,field,message", BAD_CASES)
def test_bad_records_name_file_line_field(tmp_path, checker, record, line, field, message):
    p = write_jsonl(tmp_path / "bad.jsonl", [record])
    with pytest.raises(TraceFormatError, match=message) as ei:
        imp(p, checker, fmt="stopwise")
    err = ei.value
    assert err.path == str(p) and err.line == line
    if field is not None:
        assert f"field '{field.replace(chr(92), '')}'" in str(err)


def test_duplicate_ids_name_both_lines(tmp_path, checker):
    p = write_jsonl(tmp_path / "dup.jsonl", [chain(sid=0), chain(sid=1), chain(sid=0)])
    with pytest.raises(TraceFormatError, match=r"dup.jsonl:3: field 'sample_id': duplicate chain .* first at .*dup.jsonl:1"):
        imp(p, checker, fmt="stopwise")


def test_conflicting_reference(tmp_path, checker):
    p = write_jsonl(tmp_path / "c.jsonl", [chain(sid=0), chain(sid=1, reference="5")])
    with pytest.raises(TraceFormatError, match=r"c.jsonl:2: field 'reference': differs"):
        imp(p, checker, fmt="stopwise")


def test_cli_bad_file_exit_2_nothing_written(tmp_path):
    good = [json.dumps(chain(sid=i)) for i in range(3)]
    p = tmp_path / "broken.jsonl"
    p.write_text("\n".join(good[:2] + ['{"question_id": "q1", "sample_id": 2, "text": ']) + "\n")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "stopwise.cli.main", "import", str(p), "--out", str(out), "--tokenizer", "regex"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "broken.jsonl:3" in lines[0] and "invalid JSON" in lines[0], r.stderr
    assert not out.exists() and [x.name for x in tmp_path.iterdir()] == ["broken.jsonl"]


def test_cli_existing_out_is_kept(tmp_path, checker):
    p = write_jsonl(tmp_path / "a.jsonl", [chain()])
    out = tmp_path / "out"
    write_trace_set(imp(p, checker), out)
    before = (out / "manifest.json").read_bytes()
    r = subprocess.run([sys.executable, "-m", "stopwise.cli.main", "import", str(p), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "already exists" in r.stderr
    assert (out / "manifest.json").read_bytes() == before


def test_import_write_read_same_hash(tmp_path, checker):
    recs = [chain(qid=f"q{i % 4}", sid=i // 4, answer=str(i % 3)) for i in range(16)]
    p = write_jsonl(tmp_path / "a.jsonl", recs)
    ts = imp(p, checker)
    back = read_trace_set(write_trace_set(ts, tmp_path / "set"))
    assert back.content_hash == ts.content_hash
    again = imp(p, checker)
    assert again.content_hash == ts.content_hash


answers_st = st.one_of(st.none(), st.sampled_from(["4", "4.0", "5", "\\frac{1}{2}", "0.5", "1/2", "x+1", "7"]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_chain_order_does_not_change_classes_or_hash(tmp_path_factory, checker, data):
    n = data.draw(st.integers(1, 8))
    answers = data.draw(st.lists(answers_st, min_size=n, max_size=n))
    recs = [chain(qid=f"q{i % 2}", sid=i, answer=a, text="t") for i, a in enumerate(answers)]
    perm = data.draw(st.permutations(list(range(n))))
    d = tmp_path_factory.mktemp("h")
    ts1 = imp(write_jsonl(d / "a.jsonl", recs), checker)
    ts2 = imp(write_jsonl(d / "b.jsonl", [recs[i] for i in perm]), checker)
    assert ts1.content_hash == ts2.content_hash
    by_key = lambda ts: {(r["question_id"], r["sample_id"]): r["answer_class"] for r in ts.chains.select(["question_id", "sample_id", "answer_class"]).to_pylist()}
    k1 = by_key(ts1)
    assert k1 == by_key(ts2)
    for (qa, sa), ca in k1.items():
        for (qb, sb), cb in k1.items():
            a, b = answers[sa], answers[sb]
            if qa == qb and a is not None and b is not None and checker.equivalent(a, b):
                assert ca == cb
            if a is None:
                assert ca == -1


# --- grouped and reasoning formats -------------------------------------------------


def test_grouped_with_mapping(tmp_path, checker):
    rec = {"id": 7, "q": "1+1?", "ref": "2", "outs": ["so \\boxed{2}", "it is \\boxed{3}"], "scores": [[0.1, 0.9], [0.2]]}
    p = write_jsonl(tmp_path / "g.jsonl", [rec])
    ts = imp(p, checker, fmt="grouped", mapping="question_id=id,question=q,reference=ref,texts=outs,answers=,correct=,reward=scores")
    assert ts.n_chains == 2
    assert ts.column("correct").tolist() == [True, False]
    assert ts.column("reward").tolist() == [0.9, 0.2]
    with pytest.raises(ConfigError, match="unknown mapping key 'txt'"):
        imp(p, checker, fmt="grouped", mapping="txt=outs")
    bad = write_jsonl(tmp_path / "b.jsonl", [{"idx": 1, "question": "q", "gt": "1", "code": ["a", "b"], "pred": ["1"]}])
    with pytest.raises(TraceFormatError, match=r"b.jsonl:1: field 'pred': has 1 entries for 2 texts"):
        imp(bad, checker, fmt="grouped")


def test_reasoning_text_probes(tmp_path, checker):
    text = ("Let me compute 3*3 = 9 sprints.\n\nSo 9*60 = 540. The answer is 540.\n\n"
            "Wait, let me double-check: 9 sprints of 60 m is 540 m.\n\nFinal answer: \\boxed{540}")
    recs = [{"question": "James runs 3 sprints 3 times a week, 60 m each. Meters per week?", "answer": "... #### 540", "model_answer": text}]
    p = tmp_path / "mip_gsm8k_X.json"
    p.write_text(json.dumps(recs))
    ts = imp(p, checker, fmt="reasoning")
    c = ts.chains.to_pylist()[0]
    assert c["answer"] == "540" and c["correct"] is True
    # the blank line before "So 9*60" has no candidate yet; later cues carry "540"
    assert c["probe_answer"][0] is None
    assert all(a == "540" for a in c["probe_answer"][1:])
    assert c["probe_cue"][:2] == ["blank_line", "blank_line"]
    assert 0 < c["first_candidate_position"] < c["n_tokens"]
    assert c["probe_position"] == sorted(c["probe_position"])


def test_real_reasoning_file_imports(shared_data, checker):
    ts = import_traces([shared_data / "reasoning/mip_gsm8k_DSQ.json"], name="dsq", tokenizer="regex", checker=checker)
    assert ts.n_questions == 582 and ts.n_chains == 582
    acc = ts.column("correct").mean()
    assert 0.8 < acc <= 1.0
    offs, _ = ts.list_column("probe_position")
    assert np.diff(offs).mean() > 2
