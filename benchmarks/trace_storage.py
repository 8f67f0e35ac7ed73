"""How many bytes a trace set takes on disk: the Parquet settings of the trace writer, side by side.

For each bundled trace set with per-token logprobs, the chains table is written
with (a) zstd at level 9 with dictionaries on every column (the writer's settings
before this benchmark), (b) the writer's current lossless settings
(``stopwise.traces.io._parquet_options``: float columns byte-stream-split, no
dictionary) and (c) the same settings after rounding every float to 10 or 7 mantissa bits
(float16 and bfloat16 precision, kept as float32;
``stopwise.traces.precision``, opt-in with ``stopwise collect --round-floats``).
Prints the sizes, the write and read times, whether (b) reads back to the same
content hash, the largest error of each rounding (and per column its median
and largest). With
``--decisions`` it also replays every applicable policy family on the lossless
and each rounded set and prints the share of decisions (answer, tokens,
abstention at each unit and grid point) that the rounding changed. Writes JSON.

Usage::

    python benchmarks/trace_storage.py [--sets chain_sum_qwen05,gsm8k_qwen15] [--decisions] [--out results/trace_storage.json]
    # the README's figures: the GSM8K set from its lossless assembly (corpus/README.md)
    python benchmarks/trace_storage.py --decisions --sets corpus/gsm8k_qwen05,chain_sum_qwen05,gsm8k_qwen15

A ``--sets`` item is a bundled set's name or a trace-set directory. A set that ships
rounded (the bundled ``gsm8k_qwen05``) is refused: it is measured from its lossless
assembly (``stopwise collect --out DIR --assemble-partial`` without ``--round-floats``),
as the rounding is what is measured.
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


def _decisions_changed(ts, rounded, progress=print) -> dict:
    """Replay every applicable family on the lossless and the rounded set: the share of
    (unit, grid point) decisions whose answer, tokens or abstention differ, per family."""
    import numpy as np

    from stopwise.evaluation.bench import applicable_families

    out = {}
    fams, _ = applicable_families(ts, None, "disagreement")
    for fam in fams:
        a, b = fam.replay(ts), fam.replay(rounded)
        ca, cb = a.cost, b.cost
        same = (a.answer == b.answer) & (ca == cb) & (a.abstained == b.abstained)
        frac = float(1.0 - same.mean()) if same.size else 0.0
        mean_a = ca.mean(0)
        out[fam.name] = {"cells": int(same.size), "changed": round(frac, 6),
                         "mean_cost_change": float(np.max(np.abs(mean_a - cb.mean(0)) / np.maximum(mean_a, 1)))}
        progress(f"    {fam.name:22s} decisions changed {100 * frac:6.3f}%  mean cost moved {100 * out[fam.name]['mean_cost_change']:.3f}% at most")
    return out


def main(argv: list[str] | None = None) -> dict:
    import pyarrow.parquet as pq

    from stopwise.data import bundled_path
    from stopwise.traces import read_trace_set
    from stopwise.traces.io import _parquet_options
    from stopwise.traces.model import content_hash
    from stopwise.traces.precision import column_changes, max_abs_change, with_float_precision

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="chain_sum_qwen05,gsm8k_qwen15", help="bundled set names or trace-set directories, lossless")
    ap.add_argument("--decisions", action="store_true", help="also replay the policy families on each rounded set")
    ap.add_argument("--out", default=str(RESULTS / "trace_storage.json"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [s for s in args.sets.split(",") if s]:
            ts = read_trace_set(name if os.sep in name else bundled_path(name))
            if ts.provenance.float_precision:
                raise SystemExit(f"{name} is stored rounded to {ts.provenance.float_precision.get('mantissa_bits')} mantissa bits: "
                                 "give its lossless assembly (stopwise collect --out DIR --assemble-partial, without "
                                 "--round-floats; for gsm8k_qwen05 see corpus/README.md)")
            name = ts.name
            chains = ts.chains
            variants = {
                "zstd9+dict (before)": (chains, {"compression": "zstd", "compression_level": 9}, None),
                "lossless (writer now)": (chains, _parquet_options(chains), None),
            }
            rounded = {}
            for bits in (10, 7):
                rounded[bits] = with_float_precision(ts, bits)
                r = rounded[bits].chains
                variants[f"{bits}-bit mantissa"] = (r, _parquet_options(r), bits)
            print(f"{name}: {ts.n_chains} chains, {ts.n_tokens} tokens")
            for label, (table, opts, bits) in variants.items():
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
                       "max_abs_error": max_abs_change(chains, back)}
                rows.append(row)
                print(f"  {label:26s} {size / 1e6:6.2f} MB  write {t_write:5.2f} s  read {t_read:5.2f} s  "
                      f"same hash {row['same_content_hash']!s:5s}  max error {row['max_abs_error']:.2g}")
                if bits:
                    row["column_errors"] = column_changes(chains, back)
                    print("    " + "  ".join(f"{c} {e['median_abs']:.2g}/{e['max_abs']:.2g}"
                                             for c, e in row["column_errors"].items()) + "  (median/largest change)")
                if args.decisions and bits:
                    row["decisions_changed"] = _decisions_changed(ts, rounded[bits])
    doc = {"benchmark": "trace_storage", "command": command_line(argv), "machine": machine(), "rows": rows}
    write_result(args.out, doc)
    return doc


if __name__ == "__main__":
    main()
