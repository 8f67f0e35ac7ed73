"""Storing a trace set's floats at a chosen precision (opt-in, recorded in the provenance).

Logprobs, entropies and token confidences are float32. Their low mantissa bits
hold detail the backend does not reproduce: llama.cpp's CPU logits for the
same prefix differ by up to ~0.1 nats (chosen token) and ~0.6 nats (top-5)
with what else is in the batch (``benchmarks/batch_determinism.py``; the AVX-512
and the portable AVX2 builds alike). Rounding to fewer mantissa bits, kept as float32, zeroes those bits, and the writer's
byte-stream-split encoding then stores them in almost nothing
(``benchmarks/trace_storage.py``). The default everywhere is lossless; this is
for sets whose size matters, such as the bundled corpora.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa

from stopwise.errors import ConfigError
from stopwise.traces.io import _float_columns, _leaf_columns
from stopwise.traces.model import TraceSet

FLOAT32_MANTISSA_BITS = 23


def round_mantissa(values: np.ndarray, bits: int) -> np.ndarray:
    """``values`` (float32) rounded to nearest at ``bits`` mantissa bits, ties away
    from zero; NaN and infinities are kept (and a finite value that would round to
    infinity). For normal values the relative error is at most 2**-(bits+1);
    subnormals (below 1.2e-38) keep ``bits`` bits of their own, fewer significant ones."""
    _check_bits(bits)
    v = np.ascontiguousarray(values, dtype=np.float32)
    drop = FLOAT32_MANTISSA_BITS - bits
    if drop == 0:
        return v.copy()
    half = np.uint32(1 << (drop - 1))
    keep = np.uint32((0xFFFFFFFF >> drop) << drop)
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = ((v.view(np.uint32) + half) & keep).view(np.float32)
    # NaN and infinities stay; a value within half a step of float32's largest stays unrounded
    return np.where(np.isfinite(v) & np.isfinite(rounded), rounded, v)


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= FLOAT32_MANTISSA_BITS:
        raise ConfigError(f"mantissa bits must be an integer from 1 to {FLOAT32_MANTISSA_BITS}, got {bits!r}",
                          hint="7 keeps bfloat16's precision, 10 float16's (23 is float32's own: no rounding)")


def round_table(table: pa.Table, bits: int) -> pa.Table:
    """``table`` with every float (in lists too) rounded to ``bits`` mantissa bits, as float32.

    Only float32 columns are rounded (a float64 column such as ``reward`` keeps its values:
    it is one number a chain)."""
    _check_bits(bits)

    def rec(a: pa.Array) -> pa.Array:
        if pa.types.is_list(a.type):
            return pa.ListArray.from_arrays(a.offsets, rec(a.values), type=a.type,
                                            mask=a.is_null() if a.null_count else None)
        vals = a.to_numpy(zero_copy_only=False)
        mask = a.is_null().to_numpy(zero_copy_only=False) if a.null_count else None
        return pa.array(round_mantissa(vals, bits), type=a.type, mask=mask)

    for name in _float32_columns(table.schema):
        i = table.column_names.index(name)
        table = table.set_column(i, table.schema.field(name), rec(table[name].combine_chunks()))
    return table


def _float32_columns(schema: pa.Schema) -> list[str]:
    """Top-level names of the columns whose values are float32 (possibly in lists)."""
    return [f.name for f, (_, leaf) in zip(schema, _leaf_columns(schema)) if pa.types.is_float32(leaf)]


def column_changes(a: pa.Table, b: pa.Table) -> dict[str, dict[str, float]]:
    """Per float column of two tables of one schema: the median and largest absolute
    difference (``median_abs``, ``max_abs``), NaN skipped."""
    out = {}
    for name in _float_columns(a.schema):
        x, y = a[name].combine_chunks(), b[name].combine_chunks()
        while pa.types.is_list(x.type):
            x, y = x.flatten(), y.flatten()
        xv = x.to_numpy(zero_copy_only=False).astype(np.float64)
        yv = y.to_numpy(zero_copy_only=False).astype(np.float64)
        d = np.abs(xv - yv)[np.isfinite(xv)]
        if d.size:
            out[name] = {"median_abs": float(np.median(d)), "max_abs": float(d.max())}
    return out


def max_abs_change(a: pa.Table, b: pa.Table) -> float:
    """The largest absolute difference between the floats of two tables of one schema (NaN skipped)."""
    return max((c["max_abs"] for c in column_changes(a, b).values()), default=0.0)


def with_float_precision(ts: TraceSet, bits: int) -> TraceSet:
    """A copy of ``ts`` whose chain floats are rounded to ``bits`` mantissa bits.

    The provenance gains ``float_precision``: the bits, the rounding rule, the
    largest absolute change and the content hash of the lossless set, so a reader
    can tell a rounded set from the one that was collected. Only float32 columns
    are rounded. A set already rounded to the same bits is returned as it is; any
    other rounding of a rounded set is refused (rounding twice is not rounding to
    nearest, and the change would no longer be measured from the lossless values):
    round the lossless set instead.
    """
    _check_bits(bits)
    previous: dict[str, Any] | None = ts.provenance.float_precision
    if previous:
        if previous.get("mantissa_bits") == bits:
            return ts
        raise ConfigError(f"trace set '{ts.name}' is already rounded to {previous.get('mantissa_bits')} mantissa bits; "
                          f"cannot round it again to {bits}",
                          hint="round the lossless set (e.g. stopwise collect --out DIR --assemble-partial --round-floats BITS "
                          "from the collection's working state)")
    chains = round_table(ts.chains, bits)
    record = {
        "mantissa_bits": int(bits),
        "stored_as": "float32",
        "columns": _float32_columns(ts.chains.schema),
        "rounding": "to nearest, ties away from zero; NaN, infinities and values that would round to infinity kept",
        "max_abs_change": max_abs_change(ts.chains, chains),
        "lossless_content_hash": ts.content_hash,
    }
    prov = ts.provenance.model_copy(update={"float_precision": record})
    return dataclasses.replace(ts, chains=chains, provenance=prov)
