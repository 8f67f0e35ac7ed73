"""Does a chain's seed fix its tokens whatever else is in the batch? (Embedded llama.cpp, on the CPU.)

One chain (fixed prompt and seed, temperature 0.7, top-p 0.95, top-k 40, 200 tokens)
is decoded alone, then beside 7 and 3 chains of another prompt, on the same
engine. Prints the first position where its tokens differ from the run alone
(None: identical) and writes JSON. The answer matters for anything that relies
on "same seed, same chain" across different loads: the end-to-end benchmark
and the drift monitor's shadow runs (see the README).

It also prints the batch's numeric noise on the recorded per-token figures: over
the positions where the chain's prefix is still the same as alone, the largest
and median absolute difference of the chosen token's logprob, the top-5
logprobs, the entropy and the token confidence from the run alone. This is how
far apart the same model gives the same figure for the same prefix on this
backend, the floor below which a trace's float precision carries no
information (the trace-storage benchmark compares its rounding error with it).

Usage::

    python benchmarks/batch_determinism.py [--model embedded] [--out results/batch_determinism.json]

``results/batch_determinism.json`` is the portable AVX2 build (``--out
benchmarks/results/batch_determinism.json``); ``results/batch_determinism_avx512.json`` is the AVX-512
build that decoded most of the bundled corpora
(``PYTHONPATH=build/native/site python benchmarks/batch_determinism.py --out
benchmarks/results/batch_determinism_avx512.json``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import command_line, machine, write_result  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
P1 = "A farmer has 17 cows and buys 3 times as many sheep. How many animals? Think step by step."
P2 = "Tom reads 12 pages a day for 9 days. How many pages? Think step by step."


def _noise(alone: list, other: list, n: int) -> dict[str, dict[str, float]]:
    """Absolute differences of the recorded figures over the first ``n`` positions (same prefix)."""
    import numpy as np

    out = {}
    fields = {"chosen_logprob": lambda st: [st.logprob], "top_logprobs": lambda st: list(st.top_logprobs),
              "entropy": lambda st: [st.entropy], "token_confidence": lambda st: [st.confidence]}
    for name, get in fields.items():
        d = np.array([abs(x - y) for a, b in zip(alone[:n], other[:n]) for x, y in zip(get(a), get(b))
                      if np.isfinite(x) and np.isfinite(y)], dtype=float)
        out[name] = {"positions": n, "max_abs": float(d.max()) if d.size else 0.0,
                     "median_abs": float(np.median(d)) if d.size else 0.0}
    return out


def main(argv: list[str] | None = None) -> dict:
    from stopwise.backends.base import Sampling
    from stopwise.backends.chat import chat_template, render_chat_template
    from stopwise.backends.llama_engine import BatchEngine, build_info
    from stopwise.models import resolve_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--out", default=str(RESULTS / "batch_determinism.json"))
    args = ap.parse_args(argv)
    model = resolve_model(args.model)
    eng = BatchEngine(str(model.path), n_ctx_seq=1024, n_seq_max=12)
    tpl = chat_template(eng.metadata)
    p1, p2 = (eng.tokenize_prompt(render_chat_template(tpl, [{"role": "user", "content": q}])) for q in (P1, P2))

    def run(others: int) -> list:
        s = dict(temperature=0.7, top_p=0.95, top_k=40, max_tokens=args.tokens)
        (cid,) = eng.submit(p1, [Sampling(seed=1234, **s)])
        if others:
            eng.submit(p2, [Sampling(seed=k, **s) for k in range(others)])
        steps: list = []
        while eng.n_active:
            steps += [ev.step for ev in eng.step() if ev.kind == "token" and ev.chain == cid]
        return steps

    alone = run(0)
    rows = [{"others_in_batch": 0, "tokens": len(alone), "first_difference": None}]
    for others in (7, 3, 0):
        steps = run(others)
        diff = next((i for i, (a, b) in enumerate(zip(alone, steps)) if a.text != b.text), None)
        if diff is None and len(steps) != len(alone):
            diff = min(len(steps), len(alone))
        row = {"others_in_batch": others, "tokens": len(steps), "first_difference": diff,
               "noise": _noise(alone, steps, len(alone) if diff is None else diff)}
        rows.append(row)
        worst = max(v["max_abs"] for v in row["noise"].values())
        print(f"beside {others} other chains: {len(steps)} tokens, first difference from the run alone at "
              f"{'none (identical)' if diff is None else f'token {diff}'}; on the same prefix the figures "
              f"differ by at most {worst:.3g} nats")
    doc = {"benchmark": "batch_determinism", "command": command_line(argv), "model": model.title,
           "model_sha256": model.sha256, "build": build_info(), "machine": machine(), "rows": rows}
    write_result(args.out, doc)
    return doc


if __name__ == "__main__":
    main()
