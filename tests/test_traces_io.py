"""Round trips, content hashes and atomic writes of trace-set directories."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from stopwise.errors import TraceSetError
from stopwise.traces import read_trace_set, write_trace_set
from stopwise.traces.synthetic import synthetic_trace_set


def test_round_trip_same_hash_and_content(tmp_path):
    ts = synthetic_trace_set(20, -4, seed=3)
    out = write_trace_set(ts, tmp_path / "set")
    back = read_trace_set(out)
    assert back.content_hash == ts.content_hash
    assert back.n_chains == ts.n_chains and back.n_tokens == ts.n_tokens
    assert back.chains.equals(ts.chains)
    assert back.questions.equals(ts.questions)
    o1, v1 = ts.list_column("token_confidence")
    o2, v2 = back.list_column("token_confidence")
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(v1, v2)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["content_hash"] == ts.content_hash


def test_float_columns_are_byte_stream_split_and_exact(tmp_path):
    """Logprob and entropy columns are stored byte-stream-split without a dictionary
    (smaller: benchmarks/trace_storage.py), and every float, NaN included, reads back bit for bit."""
    import pyarrow.parquet as pq

    ts = synthetic_trace_set(12, -3, seed=5)
    out = write_trace_set(ts, tmp_path / "set")
    md = pq.ParquetFile(out / "chains.parquet").metadata
    encodings = {md.row_group(0).column(i).path_in_schema: md.row_group(0).column(i).encodings
                 for i in range(md.num_columns)}
    floats = [p for p in encodings if p.split(".")[0] in ("token_logprobs", "top_logprobs", "entropy", "token_confidence")]
    assert len(floats) == 4
    for p in floats:
        assert "BYTE_STREAM_SPLIT" in encodings[p] and "RLE_DICTIONARY" not in encodings[p], (p, encodings[p])
    assert "RLE_DICTIONARY" in encodings["question_id"]
    back = read_trace_set(out)
    for col in ("token_logprobs", "entropy", "token_confidence"):
        v1, v2 = ts.list_column(col)[1], back.list_column(col)[1]
        np.testing.assert_array_equal(np.asarray(v1, np.float32).view(np.uint32), np.asarray(v2, np.float32).view(np.uint32))


def test_hash_independent_of_row_order():
    ts = synthetic_trace_set(10, 3, seed=1)
    shuffled = ts.chains.take(np.random.default_rng(0).permutation(ts.n_chains))
    from stopwise.traces.model import content_hash

    assert content_hash(ts.questions, shuffled) == ts.content_hash
    other = synthetic_trace_set(10, 3, seed=2)
    assert other.content_hash != ts.content_hash


def test_refuses_existing_output_and_keeps_it(tmp_path):
    ts = synthetic_trace_set(3, 2, seed=1)
    out = write_trace_set(ts, tmp_path / "set")
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(TraceSetError, match="already exists"):
        write_trace_set(synthetic_trace_set(4, 2, seed=2), out)
    assert (out / "manifest.json").read_bytes() == before


def test_overwrite_replaces(tmp_path):
    out = write_trace_set(synthetic_trace_set(3, 2, seed=1), tmp_path / "set")
    ts2 = synthetic_trace_set(4, 2, seed=2)
    write_trace_set(ts2, out, overwrite=True)
    assert read_trace_set(out).content_hash == ts2.content_hash
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_corrupt_set_is_detected(tmp_path):
    out = write_trace_set(synthetic_trace_set(3, 2, seed=1), tmp_path / "set")
    m = json.loads((out / "manifest.json").read_text())
    m["content_hash"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(TraceSetError, match="corrupt: content hash"):
        read_trace_set(out)


def test_chains_out_of_their_layout_are_refused(tmp_path):
    """The content hash does not see row order: a chains file re-sorted (or given a row twice, or a
    chain of an unknown question) by another tool is refused by its layout, naming the row."""
    import pyarrow.parquet as pq

    out = write_trace_set(synthetic_trace_set(3, 2, seed=1), tmp_path / "set")
    chains = pq.read_table(out / "chains.parquet")
    pq.write_table(chains.take(list(range(chains.num_rows))[::-1]), out / "chains.parquet")
    with pytest.raises(TraceSetError, match=r"chains.parquet: row 2: chain \('.*', sample 0\) out of order") as e:
        read_trace_set(out)
    assert "grouped by question" in e.value.hint
    pq.write_table(chains.take([0, 0, 1, 2, 3, 4, 5]), out / "chains.parquet")
    with pytest.raises(TraceSetError, match="row 2: .* again"):
        read_trace_set(out, verify=False)


def test_missing_and_foreign_directories(tmp_path):
    with pytest.raises(TraceSetError, match="not found"):
        read_trace_set(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TraceSetError, match="manifest.json is missing"):
        read_trace_set(tmp_path / "empty")
    d = tmp_path / "future"
    write_trace_set(synthetic_trace_set(2, 1), d)
    m = json.loads((d / "manifest.json").read_text())
    m["schema_version"] = 99
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(TraceSetError, match="schema version 99"):
        read_trace_set(d)


def test_killed_write_leaves_no_half_written_set(tmp_path):
    """Kill a writer process in the middle of writing: no set appears at --out."""
    out = tmp_path / "set"
    script = textwrap.dedent(
        f"""
        import os, sys, time
        import pyarrow.parquet as pq
        from stopwise.traces import write_trace_set
        from stopwise.traces.synthetic import synthetic_trace_set
        ts = synthetic_trace_set(30, 2, seed=1)
        real = pq.write_table
        def slow(table, where, **kw):
            real(table, where, **kw)
            print("WROTE", where, flush=True)
            time.sleep(60)
        pq.write_table = slow
        write_trace_set(ts, {str(out)!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("WROTE"), line
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists()
    with pytest.raises(TraceSetError):
        read_trace_set(out)
    # the leftover is a hidden temporary directory, never mistaken for a set
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert all(name.startswith(".set.tmp-") for name in leftovers)
