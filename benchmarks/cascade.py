"""Small-to-large cascade, live: `stopwise serve --escalate-to` against always asking the large model.

1. Certify the cascade on the calibration half of two bundled trace sets of the
   same GSM8K questions, one per model (`gsm8k_qwen05`: Qwen2.5-Coder-0.5B, 4
   chains; `gsm8k_qwen15`: Qwen2.5-Coder-1.5B, 1 chain): keep the small
   model's vote over K chains when its margin reaches t, else escalate; t is
   certified on the accuracy lost against always-1.5B (`stopwise route
   --write-policy`). The trace figures of that rule on the whole test half are
   reported too.
2. Start `stopwise serve --backend embedded --policy FILE --max-chains K
   --escalate-to embedded-1.5b` and `stopwise serve --backend embedded-1.5b`
   (no policy: one chain passed through) side by side.
3. Send the first N questions of the pair's *test half* to each with the
   official `openai` client, one request at a time, alternating servers
   question by question, with the same seeds.
4. Report per set-up: wall-clock, tokens per model, share escalated and
   accuracy against the GSM8K reference. Writes JSON.

Usage::

    python benchmarks/cascade.py --questions 20 --chains 2 --epsilon 0.1
    python benchmarks/cascade.py --small-model smollm2 --large-model smollm2 --questions 2 --max-tokens 48   # smoke run
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


def _serve(backend: str, port: int, extra: list[str], env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "stopwise.cli.main", "serve", "--backend", backend, "--port", str(port), "--max-concurrent", "1", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _stop(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()


def main(argv: list[str] | None = None) -> dict:
    from openai import OpenAI

    from stopwise.answers import AnswerChecker, extract_answer
    from stopwise.data import BUNDLED_DIR as BUNDLED
    from stopwise.datasets import MATH_SYSTEM
    from stopwise.rules.routing import cascade_policy, pair_trace_sets, trace_cascade
    from stopwise.stats.split import split_mask
    from stopwise.traces import read_trace_set

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", default=str(BUNDLED / "gsm8k_qwen05"))
    ap.add_argument("--large", default=str(BUNDLED / "gsm8k_qwen15"))
    ap.add_argument("--chains", type=int, default=2, help="small-model chains per question")
    ap.add_argument("--epsilon", type=float, default=0.1)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--small-model", default="embedded")
    ap.add_argument("--large-model", default="embedded-1.5b")
    ap.add_argument("--max-tokens", type=int, default=384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weak-token-price", type=float, default=None,
                    help="a small-model token's price in large-model tokens (default 0.32, the parameter ratio; 1 for one model)")
    ap.add_argument("--out", default=str(RESULTS / "cascade.json"))
    args = ap.parse_args(argv)

    from stopwise.errors import ConfigError

    small, large = read_trace_set(args.small), read_trace_set(args.large)
    trace = trace_cascade(pair_trace_sets(small, large, chains=args.chains), score="vote_margin", epsilon=args.epsilon,
                          delta=args.delta, weak_token_price=args.weak_token_price)
    trace.pop("curve", None)
    try:
        doc = cascade_policy(small, large, chains=args.chains, epsilon=args.epsilon, delta=args.delta,
                             weak_token_price=args.weak_token_price)
    except ConfigError as exc:  # nothing certified, or no certified cascade pays: nothing to serve, and it says so
        res = {"benchmark": "cascade", "command": command_line(), "decision": str(exc), "served": False,
               "epsilon": args.epsilon, "delta": args.delta, "chains": args.chains, "traces": [small.name, large.name],
               "trace_figures_test_half": trace, "machine": machine()}
        print(f"nothing served: {exc}")
        write_result(args.out, res)
        return res
    smoke = args.small_model != "embedded" or args.large_model != "embedded-1.5b"
    if smoke:  # the certificate does not cover other models: mark the policy uncertified rather than refuse
        doc["conditions"].update(model=None, model_sha256=None)
    work = Path(tempfile.mkdtemp(prefix="stopwise-cascade-"))
    pol = work / "cascade.json"
    pol.write_text(json.dumps(doc))

    qids = small.questions.column("question_id").to_pylist()
    in_large = set(large.questions.column("question_id").to_pylist())
    test_mask = ~split_mask(qids)
    test = [i for i, q in enumerate(qids) if test_mask[i] and q in in_large][: args.questions]
    questions = small.questions.column("question").to_pylist()
    refs = small.questions.column("reference").to_pylist()

    env = dict(os.environ, STOPWISE_DEFAULT_MAX_TOKENS=str(args.max_tokens), STOPWISE_UNCERTIFIED="mark")
    pc, pl = free_port(), free_port()
    servers = {
        "cascade": _serve(args.small_model, pc, ["--policy", str(pol), "--max-chains", str(args.chains), "--escalate-to", args.large_model], env),
        "large": _serve(args.large_model, pl, [], env),
    }
    urls = {"cascade": f"http://127.0.0.1:{pc}", "large": f"http://127.0.0.1:{pl}"}
    checker = AnswerChecker()
    rows: list[dict] = []
    try:
        for name in servers:
            try:
                wait_up(urls[name], timeout=600)
            except Exception:
                servers[name].kill()
                raise SystemExit(f"the {name} server did not come up:\n{servers[name].stderr.read()[-3000:]}") from None
        clients = {k: OpenAI(base_url=u + "/v1", api_key="none", max_retries=0, timeout=1800) for k, u in urls.items()}
        for k, i in enumerate(test):
            msgs = [{"role": "system", "content": MATH_SYSTEM}, {"role": "user", "content": questions[i]}]
            order = ("cascade", "large") if k % 2 == 0 else ("large", "cascade")
            for setup in order:
                extra = {"stopwise": {"policy": doc["family"] if setup == "cascade" else "off"}}
                t0 = time.perf_counter()
                r = clients[setup].chat.completions.create(model="x", messages=msgs, temperature=0.7, top_p=0.95,
                                                           max_tokens=args.max_tokens, seed=args.seed + k, extra_body=extra)
                wall = time.perf_counter() - t0
                sw = r.model_extra.get("stopwise") or {}
                text = r.choices[0].message.content or ""
                escalated = bool(sw.get("escalated"))
                ans = sw.get("answer") if setup == "cascade" and not escalated else extract_answer(text)
                esc_tokens = int(sw.get("escalation_tokens") or 0)
                total = int(r.usage.completion_tokens) if r.usage else 0
                rows.append({
                    "setup": setup, "question_id": qids[i], "wall_s": wall, "escalated": escalated,
                    "answered_by": sw.get("answered_by"), "chains": sw.get("chains"),
                    "small_tokens": (total - esc_tokens) if setup == "cascade" else 0,
                    "large_tokens": esc_tokens if setup == "cascade" else total,
                    "answer": ans, "correct": bool(ans is not None and checker.equivalent(ans, refs[i])),
                    "certified": sw.get("certified"),
                })
                x = rows[-1]
                print(f"  {setup:8s} {k + 1:3d}/{len(test)}  {wall:6.1f} s  small {x['small_tokens']:5d}  large {x['large_tokens']:5d}  "
                      f"{'escalated' if escalated else '         '}  answer {ans!r} ({'right' if x['correct'] else 'wrong'})", flush=True)
    finally:
        for p in servers.values():
            _stop(p)
        if hasattr(checker, "close"):
            checker.close()

    def summary(setup: str) -> dict:
        rs = [r for r in rows if r["setup"] == setup]
        n = max(len(rs), 1)
        return {
            "questions": len(rs), "wall_s": sum(r["wall_s"] for r in rs), "small_tokens": sum(r["small_tokens"] for r in rs),
            "large_tokens": sum(r["large_tokens"] for r in rs), "accuracy": sum(r["correct"] for r in rs) / n,
            "escalated": sum(r["escalated"] for r in rs) / n if setup == "cascade" else 1.0,
        }

    res = {
        "benchmark": "cascade", "command": command_line(argv), "smoke": smoke,
        "small_model": args.small_model, "large_model": args.large_model, "chains": args.chains,
        "epsilon": args.epsilon, "delta": args.delta, "threshold": doc["threshold"], "certificate": doc["certificate"],
        "guarantee": doc["cascade"]["guarantee"], "traces": [small.name, large.name],
        "trace_figures_test_half": trace, "test_questions": [qids[i] for i in test], "machine": machine(),
        "cascade": summary("cascade"), "always_large": summary("large"), "rows": rows,
    }
    c, lg = res["cascade"], res["always_large"]
    print(f"\ncertified: keep the {args.chains}-chain vote when its margin >= {doc['threshold']:g} ({doc['cascade']['guarantee']})")
    print(f"{'setup':14s} {'wall s':>8s} {'small tok':>10s} {'large tok':>10s} {'escalated':>10s} {'accuracy':>9s}")
    for name, s in (("cascade", c), ("always-large", lg)):
        print(f"{name:14s} {s['wall_s']:8.1f} {s['small_tokens']:10d} {s['large_tokens']:10d} {100 * s['escalated']:9.1f}% {100 * s['accuracy']:8.1f}%")
    if lg["wall_s"]:
        print(f"wall-clock ratio cascade / always-large: {c['wall_s'] / lg['wall_s']:.2f}")
    write_result(args.out, res)
    return res


if __name__ == "__main__":
    main()
