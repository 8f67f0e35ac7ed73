"""Bad inputs to `stopwise collect` fail early with a message that names what, where and how to
fix it, and never replace or lose what is already on disk. No model is loaded here: every case
fails before decoding (an unreachable HTTP upstream stands in for the model where one is needed)."""

import gzip
import json
import subprocess
import sys

import pytest

from stopwise.collect import CollectConfig, assemble, collect
from stopwise.datasets import load_dataset
from stopwise.errors import BackendError, ConfigError, TraceFormatError, TraceSetError, UnknownNameError
from stopwise.models import resolve_model

DEAD = "http://127.0.0.1:9"  # nothing listens there: the HTTP backend fails at its first request


def _jsonl(tmp_path, lines, name="q.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return p


# --- jsonl datasets -----------------------------------------------------------------------------


@pytest.mark.parametrize("lines, where, what", [
    ([{"id": "a", "question": "x", "answer": 1}, {"id": "a", "question": "y", "answer": 2}], 2, "duplicate id 'a'; first on line 1"),
    ([{"question": "same", "answer": 1}, {"question": "q2"}, {"question": "same", "answer": 1}], 3, "same question text again"),
    ([{"id": None, "question": "x"}], 1, "'id' must be a non-empty string or an integer"),
    ([{"id": True, "question": "x"}], 1, "'id' must be a non-empty string or an integer"),
    ([{"question": "ok"}, {"question": "   "}], 2, "non-empty string 'question'"),
    ([{"question": "x", "answer": {"value": 1}}], 1, "must be a string or a number, got dict"),
])
def test_bad_jsonl_lines_name_file_line_and_field(tmp_path, lines, where, what):
    p = _jsonl(tmp_path, lines)
    with pytest.raises(TraceFormatError, match=what) as e:
        load_dataset(f"jsonl:{p}")
    assert f"{p}:{where}:" in str(e.value)


def test_jsonl_file_problems_are_named(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(TraceFormatError, match="holds no questions"):
        load_dataset(f"jsonl:{tmp_path / 'empty.jsonl'}")
    with pytest.raises(ConfigError, match="is a directory"):
        load_dataset(f"jsonl:{tmp_path}")
    with pytest.raises(ConfigError, match="does not exist") as e:
        load_dataset("jsonl:no/such.jsonl")
    assert e.value.hint
    with pytest.raises(ConfigError, match="needs a file path"):
        load_dataset("jsonl:")
    # bad UTF-8: the exact line, however long the file before it
    good = "".join(json.dumps({"question": f"q{i}", "answer": i}) + "\n" for i in range(3000)).encode()
    (tmp_path / "latin1.jsonl").write_bytes(good + b'{"question": "caf\xe9", "answer": 1}\n')
    with pytest.raises(TraceFormatError, match="is not UTF-8 text") as e:
        load_dataset(f"jsonl:{tmp_path / 'latin1.jsonl'}")
    assert "latin1.jsonl:3001:" in str(e.value) and "UTF-8" in e.value.hint
    # a .gz that is not gzip, and one cut short
    (tmp_path / "plain.jsonl.gz").write_text('{"question": "x"}\n')
    with pytest.raises(TraceFormatError, match="cannot be read"):
        load_dataset(f"jsonl:{tmp_path / 'plain.jsonl.gz'}")
    whole = gzip.compress(good)
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(TraceFormatError, match="cannot be read"):
        load_dataset(f"jsonl:{tmp_path / 'cut.jsonl.gz'}")


# --- reasoning-gym configs ----------------------------------------------------------------------


@pytest.mark.parametrize("spec, what", [
    ("chain_sum?bad_key=1", "rejected its config"),
    ("chain_sum?min_terms=abc", "rejected its config"),
    ("chain_sum?min_terms=9&max_terms=2", "rejected its config"),
    ("chain_sum?seed=3", "'seed' is set by stopwise"),
    ("chain_sum?size=3", "'size' is set by stopwise"),
    ("chain_sum?min_terms", "is not KEY=VALUE pairs"),
    ("chain_sum?&&=&x", "is not KEY=VALUE pairs"),
])
def test_bad_reasoning_gym_configs_are_config_errors(spec, what):
    pytest.importorskip("reasoning_gym")
    with pytest.raises(ConfigError, match=what) as e:
        load_dataset(f"reasoning-gym:{spec}", size=3)
    if "rejected" in what:
        assert "min_terms" in e.value.hint  # the task's config keys are listed
    with pytest.raises(UnknownNameError, match="did you mean 'chain_sum'"):
        load_dataset("reasoning-gym:chain_summ", size=3)


# --- models -------------------------------------------------------------------------------------


def test_model_paths_that_are_not_gguf_files(tmp_path):
    with pytest.raises(ConfigError, match="is a directory, not a GGUF file"):
        resolve_model(str(tmp_path))
    (tmp_path / "notes.gguf").write_text("hello")
    with pytest.raises(ConfigError, match="is not a GGUF file"):
        resolve_model(str(tmp_path / "notes.gguf"))


# --- the output folder and the collection state ------------------------------------------------


def _cfg(tmp_path, lines=({"question": "What is 2+2?", "answer": 4}, {"question": "3+3?", "answer": 6}), **kw):
    p = _jsonl(tmp_path, lines)
    return CollectConfig(**{"dataset": f"jsonl:{p}", "model": DEAD, "questions": 2, "chains": 2, **kw})


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "stopwise.cli.main", *args], capture_output=True, text=True, timeout=120)


def test_an_out_holding_other_data_is_refused_and_kept(tmp_path):
    cfg = _cfg(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="already holds a folder that is not a trace set") as e:
        collect(cfg, out)
    assert "another --out" in e.value.hint
    assert (out / "notes.txt").read_text() == "keep me" and not (tmp_path / "mine.collect").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="already holds a file"):
        collect(cfg, tmp_path / "afile")
    with pytest.raises(ConfigError, match="cannot create the collection state"):
        collect(cfg, tmp_path / "afile" / "sub")


def test_a_wrong_model_writes_nothing_and_a_failed_start_does_not_lock_the_settings(tmp_path):
    out = tmp_path / "c"
    with pytest.raises(ConfigError, match="does not exist"):
        collect(_cfg(tmp_path, model=str(tmp_path / "missing.gguf")), out)
    assert not (tmp_path / "c.collect").exists()
    # an upstream that is down fails after the state is opened; nothing was collected, so
    # other settings may follow (here another URL) without "holds a collection with other settings"
    with pytest.raises(BackendError, match="cannot connect"):
        collect(_cfg(tmp_path), out)
    with pytest.raises(BackendError, match="cannot connect"):
        collect(_cfg(tmp_path, model="http://127.0.0.1:10", chains=3), out)
    assert json.loads((tmp_path / "c.collect" / "config.json").read_text())["identity"]["chains"] == 3


def test_other_settings_on_a_started_collection_name_both_values(tmp_path):
    out = tmp_path / "c"
    with pytest.raises(BackendError):
        collect(_cfg(tmp_path), out)
    (tmp_path / "c.collect" / "chunks" / "chunk-000000.parquet").write_bytes(b"")  # chains were collected
    with pytest.raises(ConfigError, match="chains 2 there, 3 now") as e:
        collect(_cfg(tmp_path, chains=3), out)
    assert "use the same settings to resume" in e.value.hint


def test_assembling_with_nothing_complete_refuses_and_keeps_out(tmp_path):
    out = tmp_path / "c"
    with pytest.raises(BackendError):
        collect(_cfg(tmp_path), out)
    with pytest.raises(ConfigError, match="has its 2 chain\\(s\\) yet; nothing to write"):
        assemble(out)
    assert not out.exists()
    assert not (tmp_path / "c.collect" / "runs.jsonl").exists()  # the failed start is not logged as a run


@pytest.mark.parametrize("text, what", [("{not json", "unreadable"), ("[]", "unreadable"),
                                        ('{"identity": {"dataset": "gsm8k", "from_the_future": 1}}', "unreadable")])
def test_a_damaged_state_config_is_named(tmp_path, text, what):
    out = tmp_path / "c"
    with pytest.raises(BackendError):
        collect(_cfg(tmp_path), out)
    (tmp_path / "c.collect" / "config.json").write_text(text)
    for call in (lambda: assemble(out), lambda: collect(_cfg(tmp_path), out)):
        with pytest.raises(TraceSetError, match=what) as e:
            call()
        assert "c.collect/config.json" in str(e.value) and "delete the state folder" in e.value.hint


@pytest.mark.parametrize("value", ["0:16", "64:2", "64:4"])
def test_chains_first_must_add_chains(tmp_path, value):
    p = _cli("collect", "--dataset", "gsm8k", "--model", DEAD, "--chains", "4", "--chains-first", value, "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and "needs M >= 1 questions and K > --chains (4)" in p.stderr
    assert "Traceback" not in p.stderr and "collect ━" not in p.stderr  # the error is printed alone
    assert not (tmp_path / "o.collect").exists()


def test_a_started_collection_refuses_edited_questions(tmp_path):
    """Same settings, but the JSONL file was edited after chains were collected: refused, since old
    chains would mix with new questions; a state from before fingerprints gains one and resumes."""
    out = tmp_path / "c"
    with pytest.raises(BackendError):
        collect(_cfg(tmp_path), out)
    state = tmp_path / "c.collect"
    meta = json.loads((state / "config.json").read_text())
    assert len(meta["questions_sha256"]) == 64
    import pyarrow as pa
    import pyarrow.parquet as pq

    empty = pa.table({"question_id": pa.array([], pa.string()), "sample_id": pa.array([], pa.int32())})
    pq.write_table(empty, state / "chunks" / "chunk-000000.parquet")  # a chunk: the collection has started
    with pytest.raises(BackendError):  # unchanged questions: resumes (and fails on the dead upstream)
        collect(_cfg(tmp_path), out)
    edited = [{"question": "What is 2+2?", "answer": 5}, {"question": "3+3?", "answer": 6}]
    with pytest.raises(ConfigError, match="was started on other questions") as e:
        collect(_cfg(tmp_path, edited), out)
    assert "another --out" in e.value.hint
    # a state written before fingerprints existed: no refusal, and the fingerprint is recorded
    del meta["questions_sha256"]
    (state / "config.json").write_text(json.dumps(meta))
    with pytest.raises(BackendError):
        collect(_cfg(tmp_path), out)
    again = json.loads((state / "config.json").read_text())
    assert again["questions_sha256"] != "" and again["command"] == meta["command"]


def test_a_collection_with_no_chunk_yet_takes_the_questions_it_is_run_on(tmp_path):
    """Killed before its first chunk, then run on an edited file: the new questions' fingerprint is
    recorded (not the first run's), so the original file is the one refused once chains exist."""
    out, state = tmp_path / "c", tmp_path / "c.collect"
    with pytest.raises(BackendError):
        collect(_cfg(tmp_path), out)
    first = json.loads((state / "config.json").read_text())["questions_sha256"]
    edited = [{"question": "What is 2+2?", "answer": 5}, {"question": "3+3?", "answer": 6}]
    with pytest.raises(BackendError):
        collect(_cfg(tmp_path, edited), out)
    second = json.loads((state / "config.json").read_text())["questions_sha256"]
    assert len(second) == 64 and second != first
    import pyarrow as pa
    import pyarrow.parquet as pq

    empty = pa.table({"question_id": pa.array([], pa.string()), "sample_id": pa.array([], pa.int32())})
    pq.write_table(empty, state / "chunks" / "chunk-000000.parquet")
    with pytest.raises(BackendError):  # the edited questions resume
        collect(_cfg(tmp_path, edited), out)
    with pytest.raises(ConfigError, match="was started on other questions"):
        collect(_cfg(tmp_path), out)


def test_a_state_in_use_is_refused_by_collect_and_compact(tmp_path):
    """Two processes writing chunks into one state could pick the same chunk name; the second is
    refused while the first holds the state's lock, and runs once it is released."""
    import fcntl

    from stopwise.collect import compact_chunks

    out = tmp_path / "c"
    with pytest.raises(BackendError):
        collect(_cfg(tmp_path), out)  # a started collection
    with open(tmp_path / "c.collect" / ".lock", "w") as held:
        held.write("stopwise pid 4242")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for call in (lambda: collect(_cfg(tmp_path), out), lambda: compact_chunks(out)):
            with pytest.raises(ConfigError, match="c.collect is in use: stopwise pid 4242") as e:
                call()
            assert "kill PID" in e.value.hint
    with pytest.raises(BackendError):  # released: it runs (and fails on the dead upstream)
        collect(_cfg(tmp_path), out)
    assert compact_chunks(out) == (0, 0, None)


def test_an_empty_forcing_string_is_refused(tmp_path):
    p = _cli("collect", "--dataset", "gsm8k", "--model", DEAD, "--forcing", " ", "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and "--forcing is empty" in p.stderr and not (tmp_path / "o.collect").exists()


def test_assemble_partial_refuses_settings_that_differ_from_the_collection(tmp_path):
    out = tmp_path / "c"
    with pytest.raises(BackendError):
        collect(_cfg(tmp_path), out)  # a started collection: its config.json holds the settings
    ident = json.loads((tmp_path / "c.collect" / "config.json").read_text())["identity"]
    p = _cli("collect", "--out", str(out), "--assemble-partial", "--questions", "7", "--no-cue-probes")
    assert p.returncode == 2 and "was collected with other settings than given" in p.stderr
    assert f"questions {ident['questions']} there, 7 given" in p.stderr and "cue_probes True there, False given" in p.stderr
    p = _cli("collect", "--out", str(out), "--assemble-partial", "--seed-from", str(tmp_path))
    assert p.returncode == 2 and "--seed-from seeds a collection" in p.stderr
    # the collection's own command with the flag added passes the check (and then finds nothing complete);
    # settings that only set the pace are not part of it
    own = ["--dataset", ident["dataset"], "--model", ident["model"], "--questions", str(ident["questions"]),
           "--chains", str(ident["chains"]), "--max-tokens", str(ident["max_tokens"]), "--batch", "3"]
    p = _cli("collect", *own, "--out", str(out), "--assemble-partial")
    assert p.returncode == 2 and "nothing to write" in p.stderr, p.stderr
    assert not out.exists()
