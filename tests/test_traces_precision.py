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
    neg = np.concatenate([-rng.exponential(5.0, 20000), -10.0 ** rng.uniform(-9, 1, 2000), [0.0, -0.0]])
    x = np.concatenate([neg, -neg]).astype(np.float32)  # logprobs are negative, entropies positive
    r = round_mantissa(x, bits)
    assert r.dtype == np.float32 and np.array_equal(np.signbit(r), np.signbit(x))
    rel = np.abs(r.astype(np.float64) - x) / np.maximum(np.abs(x.astype(np.float64)), 1e-30)
    assert rel.max() <= 2.0 ** -(bits + 1) * (1 + 1e-6)
    assert not np.any(r.view(np.uint32) & np.uint32((1 << (23 - bits)) - 1))  # the dropped bits are zero
    assert np.array_equal(round_mantissa(r, bits).view(np.uint32), r.view(np.uint32))  # idempotent
    # to nearest: no representable neighbour of r is closer to x
    step = np.abs(r.astype(np.float64)) * 2.0**-bits
    assert np.all(np.abs(r.astype(np.float64) - x) <= step / 2 * (1 + 1e-6) + 1e-45)


def test_round_mantissa_ties_go_away_from_zero_and_subnormals_keep_their_bits():
    one = np.float32(1.0)
    tie = np.float32(1.0 + 2.0**-8)  # exactly half a step at 7 bits
    assert round_mantissa(np.array([tie, -tie]), 7).tolist() == [1.0 + 2.0**-7, -(1.0 + 2.0**-7)]
    below = np.nextafter(tie, one)
    assert round_mantissa(np.array([below]), 7).tolist() == [1.0]
    sub = np.array([1e-40, -3e-42], dtype=np.float32)  # subnormal: rounded on their own bit pattern
    r = round_mantissa(sub, 7)
    assert np.all(np.isfinite(r)) and np.array_equal(np.signbit(r), np.signbit(sub))
    assert not np.any(r.view(np.uint32) & np.uint32((1 << 16) - 1))


def test_round_mantissa_keeps_specials_and_23_bits_is_identity():
    big = np.finfo(np.float32).max
    x = np.array([np.nan, -np.inf, np.inf, -1.2345678, 0.0, -big], dtype=np.float32)
    r = round_mantissa(x, 7)
    assert np.isnan(r[0]) and r[1] == -np.inf and r[2] == np.inf and r[4] == 0.0
    assert r[5] == -big  # would round to -inf: kept as it is
    assert r[3] != x[3] and abs(r[3] - x[3]) <= abs(x[3]) * 2.0**-8
    assert np.array_equal(round_mantissa(x, 23).view(np.uint32), x.view(np.uint32))


@pytest.mark.parametrize("bits", [0, 24, 7.5, "7", True])
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


def test_round_table_handles_slices_and_chunks():
    base = pa.array([[-0.1234567, -5.5555555], [-1.9876543], None, [-7.7777777, -0.0123456]], type=pa.list_(pa.float32()))
    sliced = pa.table({"lp": base.slice(1, 3)})  # a list array with a non-zero offset
    r = round_table(sliced, 7)
    assert r["lp"].to_pylist()[1] is None and len(r["lp"].to_pylist()[2]) == 2
    np.testing.assert_array_equal(_flat(r, "lp"), round_mantissa(_flat(sliced, "lp"), 7))
    chunked = pa.table({"lp": pa.chunked_array([base.slice(0, 2), base.slice(2, 2)])})
    np.testing.assert_array_equal(_flat(round_table(chunked, 7), "lp"), round_mantissa(_flat(chunked, "lp"), 7))


def test_rounded_set_records_precision_round_trips_and_is_smaller(tmp_path):
    ts = synthetic_trace_set(16, -4, seed=7)
    r = with_float_precision(ts, 7)
    fp = r.provenance.float_precision
    assert fp["mantissa_bits"] == 7 and fp["lossless_content_hash"] == ts.content_hash
    assert set(fp["columns"]) == set(FLOATS)
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


def test_a_rounded_set_is_not_rounded_again():
    """Rounding twice is not rounding to nearest (1 + 2^-6 - 2^-10 goes to 1 + 2^-5 through 7 bits,
    to 1 at 5 directly), and the recorded change would not be from the lossless values."""
    x = np.array([1 + 2.0**-6 - 2.0**-10], dtype=np.float32)
    assert round_mantissa(round_mantissa(x, 7), 5)[0] != round_mantissa(x, 5)[0]
    ts = synthetic_trace_set(8, -3, seed=2)
    r7 = with_float_precision(ts, 7)
    assert with_float_precision(r7, 7) is r7
    for bits in (5, 10):
        with pytest.raises(ConfigError, match="already rounded to 7 mantissa bits") as e:
            with_float_precision(r7, bits)
        assert "lossless" in e.value.hint
