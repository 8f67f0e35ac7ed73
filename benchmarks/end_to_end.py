"""End to end: `stopwise serve` with the embedded model, a calibrated policy against `off`, on held-out GSM8K.

1. Calibrate a policy family on the calibration half of the bundled logprob
   corpus (`gsm8k_qwen05`, collected with the same embedded model and
   settings) with `stopwise calibrate`.
2. Start `stopwise serve --backend embedded --policy FILE` in a subprocess.
3. Send N questions from the corpus's *test half* (never used for
   calibration) with the official `openai` client under three set-ups, each in
   turn: `off` (one chain, passed through); `off` as a self-consistency client
   (``--off-chains K`` requests at once per question, voted client-side: the
   full compute the policy is certified against); and the calibrated policy.
   Question k's chains use seeds ``seed + 1000 k + j`` in both, but that does
   not make them the same chains: llama.cpp's batched logits depend on what
   else is in the batch, so chains with one seed drift apart after a few dozen
   tokens. ``--concurrency C`` keeps C questions in flight (a loaded server,
   where the batch is shared).
4. Report per set-up: wall-clock of the whole set-up, median request latency,
   tokens (generated plus probe and forcing, from the `stopwise` object),
   chains and accuracy against the GSM8K reference, and how often the policy's
   answer differs from the K-chain client's (``disagreement_with_full``: two
   independent samplings, so this is not the certified risk, which compares a
   policy with full compute on the *same* chains). Writes JSON.

Usage::

    python benchmarks/end_to_end.py --questions 30 --policy esc --epsilon 0.1 --concurrency 4
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

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

    from stopwise.answers import AnswerChecker, cluster_answers, extract_answer
    from stopwise.policies.voting import vote
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
    ap.add_argument("--off-chains", type=int, default=None,
                    help="also run policy off as a self-consistency client: this many requests at once per question, "
                         "voted client-side (the full compute the policy is certified against; default --max-chains, 0 to skip)")
    ap.add_argument("--concurrency", type=int, default=1, help="questions in flight at once (each set-up in turn)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "end_to_end.json"))
    args = ap.parse_args(argv)
    if args.off_chains is None:
        args.off_chains = args.max_chains

    ts = read_trace_set(args.traces)
    qids = ts.questions.column("question_id").to_pylist()
    test = [i for i, t in enumerate(~split_mask(qids)) if t][: args.questions]
    questions = ts.questions.column("question").to_pylist()
    refs = ts.questions.column("reference").to_pylist()
    work = Path(tempfile.mkdtemp(prefix="stopwise-e2e-"))
    pol = work / "policy.json"
    doc = calibrate(Path(args.traces), args.policy, args.epsilon, pol, args.model)
    port = free_port()
    k_vote = args.off_chains or 0
    in_flight = args.concurrency * max(k_vote, 1)
    cmd = [sys.executable, "-m", "stopwise.cli.main", "serve", "--backend", args.model, "--policy", str(pol),
           "--port", str(port), "--max-chains", str(args.max_chains), "--max-concurrent", str(in_flight + 2)]
    env = dict(os.environ, STOPWISE_DEFAULT_MAX_TOKENS=str(args.max_tokens), STOPWISE_UNCERTIFIED="mark")
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    checker = AnswerChecker()
    setups = ["off", *([f"off-vote{k_vote}"] if k_vote > 1 else []), "policy"]
    rows: list[dict] = []
    spans: dict[str, float] = {}
    try:
        wait_up(url, timeout=300)
        client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=1800)

        def ask(i: int, policy: str, seed: int) -> tuple[float, dict, str]:
            msgs = [{"role": "system", "content": MATH_SYSTEM}, {"role": "user", "content": questions[i]}]
            t0 = time.perf_counter()
            r = client.chat.completions.create(model=args.model, messages=msgs, temperature=0.7, top_p=0.95,
                                               max_tokens=args.max_tokens, seed=seed, extra_body={"stopwise": {"policy": policy}})
            return time.perf_counter() - t0, r.model_extra.get("stopwise") or {}, r.choices[0].message.content or ""

        def one(setup: str, k: int, i: int) -> dict:
            # question k's chain j has seed base + j in every set-up (same seeds, not the same chains: see the docstring)
            base = args.seed + 1000 * k
            if setup == "policy":
                wall, sw, _ = ask(i, doc["family"], base)
                ans, tokens, chains = sw.get("answer"), int(sw.get("generated_tokens", 0) + sw.get("probe_tokens", 0)), sw.get("chains")
            else:
                n = 1 if setup == "off" else k_vote
                t0 = time.perf_counter()
                with ThreadPoolExecutor(n) as pool:  # the n chains of a self-consistency client, sent at once
                    outs = list(pool.map(lambda j: ask(i, "off", base + j), range(n)))
                wall = time.perf_counter() - t0
                answers = [extract_answer(text) for _, _, text in outs]
                ids = cluster_answers(answers, checker).ids
                win = vote(ids)
                ans = answers[int(np.flatnonzero(ids == win)[0])] if win >= 0 else None
                tokens = sum(int(sw.get("generated_tokens", sw.get("tokens", 0))) for _, sw, _ in outs)
                chains = n
                sw = outs[0][1]
            correct = bool(ans is not None and checker.equivalent(ans, refs[i]))
            print(f"  {setup:9s} {k + 1:3d}/{len(test)}  {wall:6.1f} s  {tokens:5d} tokens  "
                  f"answer {ans!r} ({'right' if correct else 'wrong'})", flush=True)
            return {"setup": setup, "question_id": qids[i], "wall_s": wall, "tokens": tokens, "chains": chains,
                    "answer": ans, "correct": correct,
                    "full_compute_tokens_estimate": sw.get("full_compute_tokens_estimate"), "certified": sw.get("certified")}

        for setup in setups:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:  # questions in flight at once
                rows += list(pool.map(lambda ki: one(setup, *ki), enumerate(test)))
            spans[setup] = time.perf_counter() - t0
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()

    full = f"off-vote{k_vote}"
    if full in setups:  # answers that differ from the K-chain client's (independent samples, see the docstring)
        ref_ans = {r["question_id"]: r["answer"] for r in rows if r["setup"] == full}
        for r in rows:
            if r["setup"] == "policy":
                r["agrees_with_full"] = bool((r["answer"] is None and ref_ans[r["question_id"]] is None)
                                             or checker.equivalent(r["answer"], ref_ans[r["question_id"]]))
    if hasattr(checker, "close"):
        checker.close()

    def summary(setup: str) -> dict:
        rs = [r for r in rows if r["setup"] == setup]
        out = {
            "questions": len(rs), "wall_s": spans[setup], "latency_median_s": float(np.median([r["wall_s"] for r in rs])),
            "tokens": sum(r["tokens"] for r in rs),
            "accuracy": sum(r["correct"] for r in rs) / max(len(rs), 1),
            "chains": sum(r["chains"] or 0 for r in rs),
        }
        if setup == "policy" and full in setups:
            out["disagreement_with_full"] = sum(not r["agrees_with_full"] for r in rs) / max(len(rs), 1)
        return out

    res = {
        "benchmark": "end_to_end",
        "command": command_line(argv),
        "model": args.model, "policy": doc["family"], "threshold": doc["threshold"], "epsilon": args.epsilon,
        "certificate": doc["certificate"], "traces": ts.name, "test_questions": [qids[i] for i in test],
        "concurrency": args.concurrency, "off_chains": k_vote, "machine": machine(),
        "setups": {s: summary(s) for s in setups}, "rows": rows,
    }
    res["off"], res["policy_run"] = res["setups"]["off"], res["setups"]["policy"]
    print(f"\n{'setup':22s} {'wall s':>8s} {'median s':>9s} {'tokens':>8s} {'chains':>7s} {'accuracy':>9s}")
    for s in setups:
        m = res["setups"][s]
        name = f"{doc['family']} (certified)" if s == "policy" else s
        print(f"{name:22s} {m['wall_s']:8.1f} {m['latency_median_s']:9.1f} {m['tokens']:8d} {m['chains']:7d} {100 * m['accuracy']:8.1f}%")
    if "disagreement_with_full" in res["policy_run"]:
        print(f"policy answer differs from the {k_vote}-chain client's in {100 * res['policy_run']['disagreement_with_full']:.1f}% "
              f"of questions (independent samplings; the certificate, epsilon {args.epsilon}, is about the same chains)")
    write_result(args.out, res)
    return res


if __name__ == "__main__":
    main()
