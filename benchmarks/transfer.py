"""Transfer of the learned exit probe between the two bundled logprob corpora, both directions.

The probe is trained on every question of one corpus (GSM8K with the embedded
0.5B model, or reasoning-gym chain_sum with the same model and settings) and
used on the other: its threshold is certified on the target's calibration half
and tested once on the target's test half. Beside it, the probe trained on the
target's own training role. Printed per direction: certified tokens saved and
test risk per epsilon, the epsilon-oracle, and the AUROC of each probe's target
on the target's answered test-half probes. Writes JSON.

Usage::

    python benchmarks/transfer.py
    python benchmarks/transfer.py --a DIR --b DIR --out results/transfer.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import command_line, machine, write_result  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _fmt(r: dict) -> str:
    if r["tokens_saved"] is None:
        return r["setting"]
    if not r["certified"] and r["kind"] != "oracle":
        return f"{100 * r['tokens_saved']:.1f}% ({r['setting']})"
    return f"{100 * r['tokens_saved']:.1f}% (risk {r['test_risk']:.3f})"


def main(argv: list[str] | None = None) -> dict:
    from stopwise.evaluation.anchors import transfer_report
    from stopwise.data import bundled_path
    from stopwise.traces import read_trace_set

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", default=None, help="trace set directory (default: bundled gsm8k_qwen05)")
    ap.add_argument("--b", default=None, help="trace set directory (default: bundled chain_sum_qwen05)")
    ap.add_argument("--epsilon", type=float, action="append", help="repeatable; default 0.05 and 0.1")
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--out", default=str(RESULTS / "transfer.json"))
    args = ap.parse_args(argv)
    eps = tuple(args.epsilon or (0.05, 0.1))
    a = read_trace_set(args.a or bundled_path("gsm8k_qwen05"))
    b = read_trace_set(args.b or bundled_path("chain_sum_qwen05"))
    reports = [transfer_report(a, b, epsilons=eps, delta=args.delta), transfer_report(b, a, epsilons=eps, delta=args.delta)]
    for rep in reports:
        print(f"\n{rep['source'][0]} -> {rep['target']}")
        for name, p in rep["probes"].items():
            au = "n/a" if p["auroc"] is None else f"{p['auroc']:.3f}"
            print(f"  {name:45s} probe AUROC {au} on {p['probes']} test probes (target share {p['positive_share'] or 0:.2f})")
        for e in eps:
            for r in rep["rows"]:
                if r["epsilon"] == e and r["kind"] in ("stopwise", "oracle"):
                    print(f"  eps {e:<5g} {r['method']:45s} {_fmt(r)}")
    doc = {"benchmark": "transfer", "command": command_line(argv), "machine": machine(), "delta": args.delta,
           "epsilons": list(eps), "reports": reports}
    write_result(args.out, doc)
    return doc


if __name__ == "__main__":
    main()
