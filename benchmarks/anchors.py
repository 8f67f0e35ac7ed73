"""Published early-stopping rules against stopwise's certified policies, on every bundled trace set.

For each set and epsilon in 0.01, 0.02, 0.05, 0.1 (disagreement with full compute,
delta 0.1), on the hashed test half:

* each anchor's best published setting whose realized test risk is <= epsilon,
  chosen in hindsight (``[hindsight]``: not deployable, an upper bound for the rule);
* the same anchor certified by stopwise's calibrator on the calibration half (``[certified]``);
* stopwise's learned exit probe certified at epsilon: in-domain (fitted on the set's
  training role) and transfer (fitted on bundled sets with no question in common);
* the epsilon-oracle.

Sets with several chains per question are rerun with ``--seeds`` seeded chain orders and
the table shows the mean (± sd). Writes every row (per seed) as JSON with the keys
``trace_set, epsilon, method, kind, setting, tokens_saved, chains_saved, test_risk, certified``
(plus ``seed, unit, oracle_fraction, n_calibration, min_epsilon, headline``), and a
Pareto plot of each method's published settings on the test half.

Usage::

    python benchmarks/anchors.py                                  # all bundled sets, 5 chain orders
    python benchmarks/anchors.py --traces DIR --seeds 1 --json out.json --plot out.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import command_line, machine, write_result  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = [r for r in results if r.get("seed", 0) == 0]
    n = len(first)
    cols = 4
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, res in zip(axes.ravel(), first):
        for name, c in res["curves"].items():
            pts = [(c["risk"][i], c["saved"][i]) for i in (c["published"] if c["kind"] == "anchor" else range(len(c["risk"])))]
            if not pts:
                continue
            pts.sort()
            xs, ys = zip(*pts)
            style = "-" if c["kind"] == "stopwise" else ":"
            ax.plot(xs, ys, style, marker="." if c["kind"] == "anchor" else None, label=name, linewidth=2 if c["kind"] == "stopwise" else 1)
        ax.axvline(0.05, color="grey", linewidth=0.5)
        ax.set_title(res["trace_set"], fontsize=9)
        ax.set_xlabel("test risk (disagreement)", fontsize=8)
        ax.set_ylabel("tokens saved", fontsize=8)
        ax.set_xlim(-0.005, 0.3)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=5)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    from rich.console import Console

    from stopwise.evaluation.anchors import EPSILONS, compare_sets, summarize
    from stopwise.cli.render import render_anchors
    from stopwise.data import bundled_paths
    from stopwise.traces import read_trace_set

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", action="append", default=None, help="trace set directories (default: every bundled set)")
    ap.add_argument("--seeds", type=int, default=5, help="chain orders for sets with several chains per question")
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--json", default=str(RESULTS / "anchors.json"))
    ap.add_argument("--plot", default=str(RESULTS / "anchors.png"))
    args = ap.parse_args(argv)

    bundled = [read_trace_set(p) for p in bundled_paths()]
    sets = [read_trace_set(p) for p in args.traces] if args.traces else bundled
    t0 = time.perf_counter()
    results = compare_sets(sets, epsilons=EPSILONS, delta=args.delta, seeds=args.seeds, donor_pool=bundled,
                           progress=lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))
    elapsed = time.perf_counter() - t0
    console = Console(width=160)
    render_anchors(console, summarize(results), delta=args.delta)
    doc = {
        "benchmark": "anchors",
        "command": command_line(argv),
        "delta": args.delta,
        "epsilons": list(EPSILONS),
        "seeds": args.seeds,
        "seconds": round(elapsed, 1),
        "machine": machine(),
        "rows": [r for res in results for r in res["rows"]],
    }
    write_result(args.json, doc, f" ({len(doc['rows'])} rows, {elapsed:.0f} s)")
    if args.plot:
        try:
            plot(results, Path(args.plot))
            print(f"wrote {args.plot}")
        except ImportError:
            print("matplotlib is not installed: no plot (pip install 'stopwise[plot]')")
    return doc


if __name__ == "__main__":
    main()
