"""Storing a trace set's floats at fewer mantissa bits (opt-in), recorded in the provenance."""

import json

import numpy as np
import pyarrow as pa
import pytest

from stopwise.errors import ConfigError
from stopwise.traces import read_trace_set, write_trace_set
from stopwise.traces.precision import round_mantissa, round_table, with_float_precision
from stopwise.traces.synthetic import synthetic_trace_set

FLOATS = ("token_logprobs", "top_logprobs", "entropy", "token_confidence", "probe_logprob")


def _flat(table: pa.Table, name: str) -> np.ndarray:
    a = table[name].combine_chunks()
    while pa.types.is_list(a.type):
        a = a.flatten()
    return a.to_numpy(zero_copy_only=False)


@pytest.mark.parametrize("bits", [1, 7, 10, 22])
def test_round_mantissa_relative_error_and_low_bits(bits):
    rng = np.random.default_rng(bits)
    x = np.concatenate([-rng.exponential(5.0, 20000), -10.0 ** rng.uniform(-9, 1, 2000), [0.0, -0.0]]).astype(np.float32)
    r = round_mantissa(x, bits)
    assert r.dtype == np.float32
    rel = np.abs(r.astype(np.float64) - x) / np.maximum(np.abs(x.astype(np.float64)), 1e-30)
    assert rel.max() <= 2.0 ** -(bits + 1) * (1 + 1e-6)
    # the dropped bits are zero, and rounding to nearest: no value moves past half a step
    assert not np.any(r.view(np.uint32) & np.uint32((1 << (23 - bits)) - 1))
    assert np.array_equal(round_mantissa(r, bits).view(np.uint32), r.view(np.uint32))  # idempotent


def test_round_mantissa_keeps_specials_and_23_bits_is_identity():
    big = np.finfo(np.float32).max
    x = np.array([np.nan, -np.inf, np.inf, -1.2345678, 0.0, -big], dtype=np.float32)
    r = round_mantissa(x, 7)
    assert np.isnan(r[0]) and r[1] == -np.inf and r[2] == np.inf and r[4] == 0.0
    assert r[5] == -big  # would round to -inf: kept as it is
    assert r[3] != x[3] and abs(r[3] - x[3]) <= abs(x[3]) * 2.0**-8
    assert np.array_equal(round_mantissa(x, 23).view(np.uint32), x.view(np.uint32))


@pytest.mark.parametrize("bits", [0, 24, 7.5, "7"])
def test_bad_bits_are_refused_with_a_hint(bits):
    with pytest.raises(ConfigError, match="mantissa bits must be an integer from 1 to 23") as e:
        round_mantissa(np.zeros(3, np.float32), bits)
    assert "bfloat16" in str(e.value.hint)


def test_round_table_touches_only_float32_and_keeps_nulls():
    t = pa.table({
        "lp": pa.array([[-0.123456789, -3.3333333], None, []], type=pa.list_(pa.float32())),
        "top": pa.array([[[-1.1111111, -2.2222222]], None], type=pa.list_(pa.list_(pa.float32()))).take([0, 1, 0]),
        "reward": pa.array([0.123456789, None, 1.0], type=pa.float64()),
        "tok": pa.array([["a", "b"], ["c"], []]),
    })
    r = round_table(t, 7)
    assert r.schema == t.schema
    assert r["lp"].null_count == 1 and r["top"].null_count == 1
    assert r["reward"].equals(t["reward"]) and r["tok"].equals(t["tok"])
    assert r["lp"].to_pylist()[2] == [] and r["lp"].to_pylist()[0] != t["lp"].to_pylist()[0]
    for name in ("lp", "top"):
        np.testing.assert_allclose(_flat(r, name), _flat(t, name), rtol=2.0**-8)


def test_rounded_set_records_precision_round_trips_and_is_smaller(tmp_path):
    ts = synthetic_trace_set(16, -4, seed=7)
    r = with_float_precision(ts, 7)
    fp = r.provenance.float_precision
    assert fp["mantissa_bits"] == 7 and fp["lossless_content_hash"] == ts.content_hash
    assert r.content_hash != ts.content_hash
    worst = max(float(np.nanmax(np.abs(_flat(ts.chains, c).astype(np.float64) - _flat(r.chains, c)))) for c in FLOATS)
    assert fp["max_abs_change"] == pytest.approx(worst) and worst > 0
    # everything but the floats is untouched
    for name in ts.chains.column_names:
        if name not in FLOATS:
            assert r.chains[name].equals(ts.chains[name]), name
    assert r.questions.equals(ts.questions)
    a = write_trace_set(ts, tmp_path / "lossless")
    b = write_trace_set(r, tmp_path / "rounded")
    assert (b / "chains.parquet").stat().st_size < 0.8 * (a / "chains.parquet").stat().st_size
    back = read_trace_set(b)
    assert back.content_hash == r.content_hash
    assert back.provenance.float_precision == fp
    assert json.loads((b / "manifest.json").read_text())["provenance"]["float_precision"]["mantissa_bits"] == 7
    assert "float_precision" not in json.loads((a / "manifest.json").read_text())["provenance"]


def test_rounding_again_keeps_the_lossless_hash_and_refuses_more_bits():
    ts = synthetic_trace_set(8, -3, seed=2)
    r7 = with_float_precision(ts, 7)
    r5 = with_float_precision(r7, 5)
    assert r5.provenance.float_precision["lossless_content_hash"] == ts.content_hash
    assert with_float_precision(r7, 7).content_hash == r7.content_hash
    with pytest.raises(ConfigError, match="already rounded to 7 mantissa bits"):
        with_float_precision(r7, 10)
