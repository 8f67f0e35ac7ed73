"""End to end: `stopwise serve` with the embedded model, a calibrated policy against `off`, on held-out GSM8K.

1. Calibrate a policy family on the calibration half of the bundled logprob
   corpus (`gsm8k_qwen05`, collected with the same embedded model and
   settings) with `stopwise calibrate`.
2. Start `stopwise serve --backend embedded --policy FILE` in a subprocess.
3. Send N questions from the corpus's *test half* (never used for
   calibration) with the official `openai` client, one request at a time, with
   the same seeds, under `off` (one chain, passed through) and under the
   calibrated policy.
4. Report per set-up: wall-clock, tokens (generated plus probe and forcing,
   from the `stopwise` object), chains and accuracy against the GSM8K
   reference; the policy rows also carry the server's estimate of what full
   compute would have cost. Writes JSON.

Usage::

    python benchmarks/end_to_end.py --questions 30 --policy adaptive_consistency --epsilon 0.1
    python benchmarks/end_to_end.py --model smollm2 --questions 2 --max-tokens 48   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import command_line, free_port, machine, wait_up, write_result  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def calibrate(traces: Path, family: str, epsilon: float, out: Path, model: str) -> dict:
    exe = [sys.executable, "-m", "stopwise.cli.main"]
    r = subprocess.run([*exe, "calibrate", "--traces", str(traces), "--policy", family, "--epsilon", str(epsilon), "--out", str(out)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"stopwise calibrate failed:\n{r.stdout}\n{r.stderr}")
    doc = json.loads(out.read_text())
    if doc["index"] is None:
        raise SystemExit(f"{family} is not certified at epsilon {epsilon} on {traces.name}: {r.stdout.strip()}")
    if model != "embedded":  # a smoke run on another model: the certificate does not cover it, so mark it
        doc["conditions"].update(model=None, model_sha256=None)
    out.write_text(json.dumps(doc))
    return doc


def main(argv: list[str] | None = None) -> dict:
    from openai import OpenAI

    from stopwise.answers import AnswerChecker, extract_answer
    from stopwise.data import bundled_path
    from stopwise.datasets import MATH_SYSTEM
    from stopwise.stats.split import split_mask
    from stopwise.traces import read_trace_set

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", default=str(bundled_path("gsm8k_qwen05")))
    ap.add_argument("--policy", default="adaptive_consistency", help="family to calibrate (multi-chain: adaptive chain count)")
    ap.add_argument("--epsilon", type=float, default=0.1)
    ap.add_argument("--questions", type=int, default=30)
    ap.add_argument("--model", default="embedded", help="the serve backend (embedded; smollm2 for a smoke run)")
    ap.add_argument("--max-tokens", type=int, default=384)
    ap.add_argument("--max-chains", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "end_to_end.json"))
    args = ap.parse_args(argv)

    ts = read_trace_set(args.traces)
    qids = ts.questions.column("question_id").to_pylist()
    test = [i for i, t in enumerate(~split_mask(qids)) if t][: args.questions]
    questions = ts.questions.column("question").to_pylist()
    refs = ts.questions.column("reference").to_pylist()
    work = Path(tempfile.mkdtemp(prefix="stopwise-e2e-"))
    pol = work / "policy.json"
    doc = calibrate(Path(args.traces), args.policy, args.epsilon, pol, args.model)
    port = free_port()
    cmd = [sys.executable, "-m", "stopwise.cli.main", "serve", "--backend", args.model, "--policy", str(pol),
           "--port", str(port), "--max-chains", str(args.max_chains), "--max-concurrent", "2"]
    env = dict(os.environ, STOPWISE_DEFAULT_MAX_TOKENS=str(args.max_tokens), STOPWISE_UNCERTIFIED="mark")
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    checker = AnswerChecker()
    rows: list[dict] = []
    try:
        wait_up(url, timeout=300)
        client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=1800)
        for setup in ("off", "policy"):
            for k, i in enumerate(test):
                msgs = [{"role": "system", "content": MATH_SYSTEM}, {"role": "user", "content": questions[i]}]
                extra = {"stopwise": {"policy": "off" if setup == "off" else doc["family"]}}
                t0 = time.perf_counter()
                r = client.chat.completions.create(model=args.model, messages=msgs, temperature=0.7, top_p=0.95,
                                                   max_tokens=args.max_tokens, seed=args.seed + k, extra_body=extra)
                wall = time.perf_counter() - t0
                sw = r.model_extra.get("stopwise") or {}
                text = r.choices[0].message.content or ""
                ans = sw.get("answer") if setup == "policy" else extract_answer(text)
                rows.append({
                    "setup": setup, "question_id": qids[i], "wall_s": wall,
                    "tokens": int(sw.get("generated_tokens", sw.get("tokens", 0)) + sw.get("probe_tokens", 0)),
                    "chains": sw.get("chains"), "answer": ans, "correct": bool(ans is not None and checker.equivalent(ans, refs[i])),
                    "full_compute_tokens_estimate": sw.get("full_compute_tokens_estimate"), "certified": sw.get("certified"),
                })
                print(f"  {setup:7s} {k + 1:3d}/{len(test)}  {wall:6.1f} s  {rows[-1]['tokens']:5d} tokens  "
                      f"answer {ans!r} ({'right' if rows[-1]['correct'] else 'wrong'})", flush=True)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        if hasattr(checker, "close"):
            checker.close()

    def summary(setup: str) -> dict:
        rs = [r for r in rows if r["setup"] == setup]
        return {
            "questions": len(rs), "wall_s": sum(r["wall_s"] for r in rs), "tokens": sum(r["tokens"] for r in rs),
            "accuracy": sum(r["correct"] for r in rs) / max(len(rs), 1),
            "chains": sum(r["chains"] or 0 for r in rs),
        }

    res = {
        "benchmark": "end_to_end",
        "command": command_line(argv),
        "model": args.model, "policy": doc["family"], "threshold": doc["threshold"], "epsilon": args.epsilon,
        "certificate": doc["certificate"], "traces": ts.name, "test_questions": [qids[i] for i in test],
        "machine": machine(),
        "off": summary("off"), "policy_run": summary("policy"), "rows": rows,
    }
    off, p = res["off"], res["policy_run"]
    print(f"\n{'setup':10s} {'wall s':>8s} {'tokens':>8s} {'chains':>7s} {'accuracy':>9s}")
    for name, s in (("off", off), (doc["family"], p)):
        print(f"{name:10s} {s['wall_s']:8.1f} {s['tokens']:8d} {s['chains']:7d} {100 * s['accuracy']:8.1f}%")
    write_result(args.out, res)
    return res


if __name__ == "__main__":
    main()
