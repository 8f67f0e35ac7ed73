"""Replay speed: the vectorized sweep (``family.replay``) against the reference driver.

Builds a large synthetic trace set (random numbers, never a real result), then
for every registered policy family the set supports:

* times ``family.replay(ts)`` over the family's own grid (best of ``--repeats``);
* times the same sweep over a real 100-point grid (the family's class with its
  ``grid`` replaced by 100 knob values, defined here in the benchmark; the
  library is untouched) and scales it linearly in tokens to exactly 10M tokens;
* times ``stopwise.replay.reference.run_reference`` on a random subset of units
  (chains for single-chain families, whole questions for multi-chain ones) and
  checks that it agrees with the vectorized sweep on those units.

Speed is given in *token-events per second*: (tokens of the set x grid points)
/ seconds, the same definition for both drivers (for the reference, the tokens
of the subset it ran). Build time is not measured.

Usage::

    python benchmarks/replay_speed.py                 # 10M tokens, ~2-3 minutes on 2 cores
    python benchmarks/replay_speed.py --quick         # 1M tokens smoke run
    python benchmarks/replay_speed.py --tokens 2e7 --out /tmp/rs.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from stopwise.evaluation.bench import brief_settings
from stopwise.policies.registry import family_names, prepare_family
from stopwise.replay.reference import run_reference
from stopwise.traces.model import Provenance, TraceSet
from stopwise.traces.synthetic import synthetic_trace_set

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "replay_speed.json"
TEN_M = 10_000_000
GRID_POINTS = 100


def say(*parts: object) -> None:
    print(*parts, flush=True)


# --- the trace set ---------------------------------------------------------------------
def build_set(target_tokens: int, chains: int, mean_tokens: int, seed: int, chunk_tokens: int = 1_000_000) -> tuple[TraceSet, dict]:
    """At least ``target_tokens`` tokens of synthetic traces, built in chunks and concatenated.

    ``synthetic_trace_set`` numbers questions from 0 in every call, so each
    chunk's question ids get a chunk prefix before the tables are concatenated.
    """
    t0 = time.perf_counter()
    q_tables, c_tables = [], []
    total = 0
    tok_per_q = chains * mean_tokens * 0.91  # first guess; re-estimated from each chunk
    i = 0
    while total < target_tokens:
        remaining = target_tokens - total
        n_q = max(1, min(math.ceil(chunk_tokens / tok_per_q), math.ceil(remaining / tok_per_q)))
        chunk_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        part = synthetic_trace_set(n_q, chains, mean_tokens=mean_tokens, seed=chunk_seed, name=f"chunk{i}")
        prefix = f"c{i:04d}-"
        qt, ct = part.questions, part.chains
        qt = qt.set_column(qt.schema.get_field_index("question_id"), qt.schema.field("question_id"),
                           pa.array([prefix + q for q in qt.column("question_id").to_pylist()], pa.string()))
        ct = ct.set_column(ct.schema.get_field_index("question_id"), ct.schema.field("question_id"),
                           pa.array([prefix + q for q in ct.column("question_id").to_pylist()], pa.string()))
        q_tables.append(qt)
        c_tables.append(ct)
        total += part.n_tokens
        tok_per_q = part.n_tokens / part.n_questions
        i += 1
        say(f"  built chunk {i}: {part.n_questions} questions x {chains} chains, {part.n_tokens:,} tokens "
            f"(total {total:,}, {time.perf_counter() - t0:.1f} s)")
    questions = pa.concat_tables(q_tables).combine_chunks()
    chains_t = pa.concat_tables(c_tables).combine_chunks()
    prov = Provenance(
        source="synthetic",
        notes="random synthetic traces for the replay speed benchmark; not a real result",
        sampling={"seed": seed, "chunks": i, "chains_per_question": chains, "mean_tokens": mean_tokens},
    )
    ts = TraceSet(name="replay-speed-synthetic", questions=questions, chains=chains_t, provenance=prov)
    info = {
        "questions": ts.n_questions,
        "chains": ts.n_chains,
        "chains_per_question": chains,
        "tokens": ts.n_tokens,
        "mean_tokens_per_chain": ts.n_tokens / max(ts.n_chains, 1),
        "probes": int(len(ts.list_column("probe_position")[1])),
        "chunks": i,
        "arrow_bytes": int(chains_t.nbytes + questions.nbytes),
        "build_seconds": time.perf_counter() - t0,
        "generator": "stopwise.traces.synthetic.synthetic_trace_set, chunks of ~1M tokens concatenated with pyarrow",
    }
    return ts, info


def subset(ts: TraceSet, chain_rows: np.ndarray) -> TraceSet:
    """The trace set restricted to ``chain_rows`` (sorted) and the questions they belong to."""
    rows = np.sort(np.asarray(chain_rows, dtype=np.int64))
    q_rows = np.unique(np.asarray(ts.question_index)[rows])
    return TraceSet(name=f"{ts.name}-subset", questions=ts.questions.take(q_rows), chains=ts.chains.take(rows),
                    provenance=ts.provenance)


# --- 100-point grids -------------------------------------------------------------------
def grid_100(name: str) -> np.ndarray:
    """100 knob values for family ``name``, safe to aggressive (the library's own grids are 5-19 points)."""
    n = GRID_POINTS
    if name == "token_budget":
        g = np.unique(np.rint(np.geomspace(16, 32768, n)).astype(np.int64))[::-1]
        return g if len(g) == n else np.rint(np.linspace(32768, 64, n)).astype(np.int64)
    if name == "first_candidate":
        return np.arange(n - 1, -1, -1, dtype=np.int64)  # reflections 99..0
    if name == "answer_convergence":
        return np.arange(n + 1, 1, -1, dtype=np.int64)  # agreements 101..2
    if name in ("probe_confidence", "adaptive_consistency"):
        return np.linspace(0.999, 0.5, n)
    if name == "learned_exit":
        return np.linspace(0.9999, 0.0, n)  # probe-score thresholds
    if name == "entropy_monitor":
        return np.linspace(1.01, 0.01, n)  # high-entropy share limits
    if name == "eprocess_vote":
        return np.geomspace(0.001, 0.5, n)  # alpha
    if name in ("majority_vote", "first_finish"):
        return np.arange(n, 0, -1, dtype=np.int64)  # n chains 100..1
    if name == "esc":
        return np.arange(n + 1, 1, -1, dtype=np.int64)  # windows 101..2
    if name == "deepconf_online":
        return np.linspace(0.0, 99.0, n)  # percentiles
    if name == "vote_margin_abstain":
        return np.linspace(0.0, 0.99, n)
    raise KeyError(name)


def with_grid(family, values: np.ndarray):  # noqa: ANN001, ANN201
    """A copy of ``family`` whose ``grid`` is ``values`` (a subclass made here; sweeps loop over ``self.grid``)."""
    cls = type(family)
    values = np.asarray(values)
    sub = type(f"{cls.__name__}Grid{len(values)}", (cls,), {"grid": property(lambda self: values)})
    out = copy.copy(family)
    out.__class__ = sub
    return out


# --- timing ----------------------------------------------------------------------------
def best_of(fn, repeats: int) -> tuple[float, object]:  # noqa: ANN001
    best, result = math.inf, None
    for _ in range(repeats):
        result = None
        gc.collect()
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


FIELDS = ("answer", "abstained", "tokens", "probe_tokens", "latency", "chains")
FULL_FIELDS = ("answer_full", "tokens_full", "probe_tokens_full", "latency_full", "chains_full")


def agrees(vec, ref, units: np.ndarray) -> bool:  # noqa: ANN001
    """The vectorized result restricted to ``units`` equals the reference result (same unit order)."""
    ok = all(np.array_equal(np.asarray(getattr(vec, f))[units], np.asarray(getattr(ref, f))) for f in FIELDS)
    return ok and all(np.array_equal(np.asarray(getattr(vec, f))[units], np.asarray(getattr(ref, f))) for f in FULL_FIELDS)


def time_reference(family, ts: TraceSet, vec, n_units: int, budget_s: float, rng: np.random.Generator) -> dict:  # noqa: ANN001
    """Run the reference driver on random units in small batches until ``n_units`` or ``budget_s`` is reached.

    Each batch runs on a sub-trace-set holding only its units (so ``family.full``
    inside ``run_reference`` does not sweep the whole large set); building the
    subset is not timed.
    """
    single = family.kind == "single"
    pool = ts.n_chains if single else ts.n_questions
    order = rng.permutation(pool)[: min(n_units, pool)]
    batch = 10 if single else 1
    offsets = ts.question_offsets
    seconds, tokens, done, match = 0.0, 0, 0, True
    n_tok = np.asarray(ts.column("n_tokens", fill=0), dtype=np.int64)
    while done < len(order) and (seconds < budget_s or done == 0):
        units = np.sort(order[done : done + batch])
        if single:
            rows = units
        else:
            rows = np.concatenate([np.arange(offsets[q], offsets[q + 1]) for q in units])
        sub = subset(ts, rows)
        gc.collect()
        t = time.perf_counter()
        ref = run_reference(family, sub)
        seconds += time.perf_counter() - t
        tokens += int(n_tok[rows].sum())
        done += len(units)
        if vec is not None:
            match &= agrees(vec, ref, units)
    g = len(family.grid)
    return {
        "units": done,
        "unit": "chain" if single else "question",
        "tokens": tokens,
        "seconds": seconds,
        "token_events": tokens * g,
        "token_events_per_s": tokens * g / seconds if seconds > 0 else float("nan"),
        "matches_vectorized": bool(match) if vec is not None else None,
    }


# --- report ----------------------------------------------------------------------------
def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    import stopwise

    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "cpu_model": cpu,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "stopwise": getattr(stopwise, "__version__", None),
        "threads_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
    }


def fmt_rate(x: float | None) -> str:
    if x is None or not np.isfinite(x):
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def table(rows: list[dict]) -> str:
    head = ("family", "kind", "G", "vec s", "vec tok-ev/s", "100pt s", "100pt@10M s", "ref units", "ref s",
            "ref tok-ev/s", "vec/ref", "match")
    lines = []
    for r in rows:
        if r.get("skipped"):
            lines.append((r["family"], r["kind"], "-", "skipped: " + r["skipped"], "", "", "", "", "", "", "", ""))
            continue
        ref = r.get("reference") or {}
        lines.append((
            r["family"], r["kind"], str(r["grid_points"]), f"{r['vectorized_seconds']:.3f}",
            fmt_rate(r["vectorized_token_events_per_s"]),
            f"{r['grid100_seconds']:.2f}" if r.get("grid100_seconds") is not None else "-",
            f"{r['grid100_seconds_at_10M_tokens']:.2f}" if r.get("grid100_seconds_at_10M_tokens") is not None else "-",
            f"{ref.get('units', '-')} {ref.get('unit', '')[:1]}" if ref else "-",
            f"{ref['seconds']:.2f}" if ref else "-",
            fmt_rate(ref.get("token_events_per_s")) if ref else "-",
            f"{r['ratio_vectorized_over_reference']:.0f}x" if r.get("ratio_vectorized_over_reference") else "-",
            {True: "yes", False: "NO", None: "-"}[ref.get("matches_vectorized")] if ref else "-",
        ))
    full = [l for l in lines if not l[3].startswith("skipped")]
    widths = [max([len(h)] + [len(l[i]) for l in full]) for i, h in enumerate(head)]
    out = ["  ".join(h.rjust(w) if i >= 2 else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    out.append("  ".join("-" * w for w in widths))
    for l in lines:
        if l[3].startswith("skipped"):
            out.append(f"{l[0].ljust(widths[0])}  {l[1].ljust(widths[1])}  {l[3]}")
        else:
            out.append("  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(l, widths))))
    return "\n".join(out)


# --- main ------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=float, default=None, help="tokens in the synthetic set (default 10_000_000; 1M with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chains", type=int, default=32, help="chains per question (default 32; deepconf_online needs > 16)")
    p.add_argument("--mean-tokens", type=int, default=400, help="mean_tokens of synthetic_trace_set (default 400)")
    p.add_argument("--reference-units", type=int, default=None,
                   help="reference subset: this many chains for single-chain families and max(1, N//4) questions "
                        "for multi-chain ones (default 200 -> 200 chains / 50 questions; 20 with --quick)")
    p.add_argument("--reference-seconds", type=float, default=None,
                   help="stop adding reference units once a family's reference time passes this (default 15; 2 with --quick)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each vectorized sweep; the best is kept (default 3)")
    p.add_argument("--no-grid100", action="store_true", help="skip the real 100-point sweeps (extrapolate instead)")
    p.add_argument("--families", default=None, help="comma-separated family names (default: all registered)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT.relative_to(HERE.parent)})")
    p.add_argument("--quick", action="store_true", help="a 1M-token smoke run")
    a = p.parse_args(argv)
    if a.tokens is None:
        a.tokens = 1_000_000 if a.quick else TEN_M
    a.tokens = int(a.tokens)
    if a.reference_units is None:
        a.reference_units = 20 if a.quick else 200
    if a.reference_seconds is None:
        a.reference_seconds = 2.0 if a.quick else 15.0
    return a


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    t_start = time.perf_counter()
    machine = machine_info()
    say(f"machine: {machine['cpu_count']} CPUs ({machine['cpu_model']}), python {machine['python']}, "
        f"numpy {machine['numpy']}, pyarrow {machine['pyarrow']}")
    say(f"building a synthetic trace set of >= {args.tokens:,} tokens (not timed) ...")
    ts, set_info = build_set(args.tokens, args.chains, args.mean_tokens, args.seed)
    say(f"set: {set_info['questions']:,} questions, {set_info['chains']:,} chains, {set_info['tokens']:,} tokens, "
        f"{set_info['probes']:,} probes, {set_info['arrow_bytes'] / 1e6:.0f} MB, built in {set_info['build_seconds']:.1f} s")
    total = ts.n_tokens
    names = family_names() if args.families is None else [n.strip() for n in args.families.split(",") if n.strip()]
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, 0xBE11C4]))
    rows: list[dict] = []
    for name in names:
        fam = prepare_family(name, ts)  # learned_exit is fitted on the training role here, outside the timing
        row: dict = {"family": name, "kind": fam.kind}
        reason = fam.supports(ts)
        if reason is not None:
            row["skipped"] = reason
            rows.append(row)
            say(f"[{name}] skipped: {reason}")
            continue
        g = len(fam.grid)
        secs, vec = best_of(lambda: fam.replay(ts), args.repeats)
        rate = total * g / secs
        row.update({
            "grid_points": g,
            "grid": np.asarray(fam.grid).tolist(),
            "settings": brief_settings(fam.settings()),
            "vectorized_seconds": secs,
            "vectorized_token_events_per_s": rate,
            "grid100_extrapolated_seconds_at_10M_tokens": secs * (GRID_POINTS / g) * (TEN_M / total),
        })
        say(f"[{name}] vectorized: {g} grid points over {total:,} tokens in {secs:.3f} s "
            f"(best of {args.repeats}) = {fmt_rate(rate)} token-events/s")
        if not args.no_grid100 and name != "combined":  # combined's grid is its declared 19-point path
            fam100 = with_grid(fam, grid_100(name))
            s100, _ = best_of(lambda: fam100.replay(ts), args.repeats)
            row.update({
                "grid100_seconds": s100,
                "grid100_seconds_at_10M_tokens": s100 * TEN_M / total,
                "grid100_token_events_per_s": total * GRID_POINTS / s100,
                "grid100_grid": np.asarray(fam100.grid).tolist(),
            })
            say(f"[{name}] 100-point grid: {s100:.3f} s over {total:,} tokens -> {s100 * TEN_M / total:.3f} s per 10M tokens "
                f"({fmt_rate(total * GRID_POINTS / s100)} token-events/s; linear extrapolation from {g} points "
                f"would say {row['grid100_extrapolated_seconds_at_10M_tokens']:.3f} s)")
        n_ref = args.reference_units if fam.kind == "single" else max(1, args.reference_units // 4)
        ref = time_reference(fam, ts, vec, n_ref, args.reference_seconds, rng)
        del vec
        row["reference"] = ref
        row["ratio_vectorized_over_reference"] = rate / ref["token_events_per_s"]
        say(f"[{name}] reference: {ref['units']} {ref['unit']}s, {ref['tokens']:,} tokens x {g} in {ref['seconds']:.2f} s "
            f"= {fmt_rate(ref['token_events_per_s'])} token-events/s; vectorized/reference = "
            f"{row['ratio_vectorized_over_reference']:.0f}x; agrees with the sweep: {ref['matches_vectorized']}")
        rows.append(row)
        gc.collect()

    done = [r for r in rows if not r.get("skipped")]
    say("")
    say(f"replay speed over {total:,} synthetic tokens ({ts.n_chains:,} chains, {ts.n_questions:,} questions); "
        f"token-events = tokens x grid points")
    say(table(rows))
    worst = max((r.get("grid100_seconds_at_10M_tokens") or 0.0 for r in done), default=0.0)
    if done and not args.no_grid100:
        say(f"100-point sweep over 10M tokens (real 100-point grids, scaled linearly in tokens from {total:,}): "
            f"slowest family {worst:.2f} s; all families {sum(r.get('grid100_seconds_at_10M_tokens', 0.0) for r in done):.1f} s "
            f"in total; target <= 60 s per sweep: {'met' if worst <= 60 else 'NOT met'}")
    mismatched = [r["family"] for r in done if r["reference"]["matches_vectorized"] is False]
    if mismatched:
        say(f"WARNING: the reference driver disagrees with the vectorized sweep for: {', '.join(mismatched)}")

    result = {
        "benchmark": "replay_speed",
        "command": shlex.join(["python", "benchmarks/replay_speed.py", *argv]),
        "argv": argv,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine,
        "set": set_info,
        "definitions": {
            "token_events_per_s": "(tokens of the set x grid points) / seconds; for the reference, tokens of the subset it ran",
            "vectorized_seconds": f"best of {args.repeats} runs of family.replay(ts) over the family's own grid",
            "grid100_seconds": "best-of repeats of family.replay(ts) with the family's grid replaced by 100 knob values "
                               "(a subclass defined in this benchmark), over the whole set",
            "grid100_seconds_at_10M_tokens": "grid100_seconds x 10M / set tokens (linear in tokens)",
            "grid100_extrapolated_seconds_at_10M_tokens": "vectorized_seconds x 100 / grid points x 10M / set tokens "
                                                          "(linear extrapolation, for comparison only)",
            "reference": "run_reference on random units in batches, each on a sub-trace-set of only its units "
                         "(subset building not timed), until reference_units or reference_seconds",
            "ratio_vectorized_over_reference": "vectorized token-events/s / reference token-events/s",
        },
        "families": rows,
        "grid100_slowest_seconds_at_10M_tokens": worst if not args.no_grid100 else None,
        "total_seconds": time.perf_counter() - t_start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    os.replace(tmp, args.out)
    say(f"wrote {args.out} (total {result['total_seconds']:.0f} s)")
    return 1 if mismatched else 0


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
