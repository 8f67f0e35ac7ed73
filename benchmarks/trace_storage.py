"""How many bytes a trace set takes on disk: the Parquet settings of the trace writer, side by side.

For each bundled trace set with per-token logprobs, the chains table is written
with (a) zstd at level 9 with dictionaries on every column (the writer's settings
before this benchmark), (b) the writer's current lossless settings
(``stopwise.traces.io._parquet_options``: float columns byte-stream-split, no
dictionary) and (c) two lossy what-ifs that are measured, not used: the same
settings after rounding every float to 10 or 7 mantissa bits (float16 and
bfloat16 precision, kept as float32). Prints the sizes, the write and read
times, whether (b) reads back to the same content hash, the largest error of
each what-if, and, for a set that is still being collected, its size projected
to its target chain count. Writes JSON.

Usage::

    python benchmarks/trace_storage.py [--sets gsm8k_qwen05,chain_sum_qwen05] [--out results/trace_storage.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import command_line, machine, write_result  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# target chain counts of the sets still being collected (issue 4): 600 x 4 + 64 x 12 and 300 x 4
TARGETS = {"gsm8k_qwen05": 600 * 4 + 64 * 12, "chain_sum_qwen05": 300 * 4}


def _round_mantissa(table, bits: int):
    """``table`` with every float rounded to nearest at ``bits`` mantissa bits (float32 kept)."""
    import numpy as np
    import pyarrow as pa

    from stopwise.traces.io import _float_columns

    drop = 23 - bits
    half, keep = np.uint32(1 << (drop - 1)), np.uint32((0xFFFFFFFF >> drop) << drop)

    def rec(a):
        if pa.types.is_list(a.type):
            nulls = a.is_null() if a.null_count else None
            return pa.ListArray.from_arrays(a.offsets, rec(a.values), type=a.type, mask=nulls)
        v = a.to_numpy(zero_copy_only=False).astype(np.float32)
        finite = np.isfinite(v)
        u = v.view(np.uint32)
        out = np.where(finite, ((u + half) & keep).view(np.float32), v)
        return pa.array(out, type=pa.float32())

    for name in _float_columns(table.schema):
        i = table.column_names.index(name)
        table = table.set_column(i, name, rec(table[name].combine_chunks()))
    return table


def _max_error(a, b) -> float:
    import numpy as np
    import pyarrow as pa

    from stopwise.traces.io import _float_columns

    worst = 0.0
    for name in _float_columns(a.schema):
        x, y = a[name].combine_chunks(), b[name].combine_chunks()
        while pa.types.is_list(x.type):
            x, y = x.flatten(), y.flatten()
        x, y = x.to_numpy(zero_copy_only=False), y.to_numpy(zero_copy_only=False)
        ok = np.isfinite(x)
        if ok.any():
            worst = max(worst, float(np.abs(x[ok] - y[ok]).max()))
    return worst


def main(argv: list[str] | None = None) -> dict:
    import pyarrow.parquet as pq

    from stopwise.data import bundled_path
    from stopwise.traces import read_trace_set
    from stopwise.traces.io import _parquet_options
    from stopwise.traces.model import content_hash

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="gsm8k_qwen05,chain_sum_qwen05,gsm8k_qwen15")
    ap.add_argument("--out", default=str(RESULTS / "trace_storage.json"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [s for s in args.sets.split(",") if s]:
            ts = read_trace_set(bundled_path(name))
            chains = ts.chains
            variants = {
                "zstd9+dict (before)": (chains, {"compression": "zstd", "compression_level": 9}),
                "lossless (writer now)": (chains, _parquet_options(chains)),
            }
            for bits in (10, 7):
                r = _round_mantissa(chains, bits)
                variants[f"{bits}-bit mantissa (what-if)"] = (r, _parquet_options(r))
            print(f"{name}: {ts.n_chains} chains, {ts.n_tokens} tokens")
            for label, (table, opts) in variants.items():
                path = Path(tmp) / f"{name}.parquet"
                t0 = time.perf_counter()
                pq.write_table(table, path, row_group_size=4096, **opts)
                t_write = time.perf_counter() - t0
                t0 = time.perf_counter()
                back = pq.read_table(path)
                t_read = time.perf_counter() - t0
                size = os.path.getsize(path)
                row = {"set": name, "variant": label, "chains": ts.n_chains, "tokens": ts.n_tokens,
                       "bytes": size, "write_s": round(t_write, 3), "read_s": round(t_read, 3),
                       "same_content_hash": content_hash(ts.questions, back.cast(chains.schema)) == ts.content_hash,
                       "max_abs_error": _max_error(chains, back)}
                if name in TARGETS and ts.n_chains < TARGETS[name]:
                    row["projected_bytes_at_target"] = int(size * TARGETS[name] / ts.n_chains)
                    row["target_chains"] = TARGETS[name]
                rows.append(row)
                proj = f", {row['projected_bytes_at_target'] / 1e6:5.1f} MB at {TARGETS[name]} chains" \
                    if "projected_bytes_at_target" in row else ""
                print(f"  {label:26s} {size / 1e6:6.2f} MB{proj}  write {t_write:5.2f} s  read {t_read:5.2f} s  "
                      f"same hash {row['same_content_hash']!s:5s}  max error {row['max_abs_error']:.2g}")
    doc = {"benchmark": "trace_storage", "command": command_line(argv), "machine": machine(), "rows": rows}
    write_result(args.out, doc)
    return doc


if __name__ == "__main__":
    main()
