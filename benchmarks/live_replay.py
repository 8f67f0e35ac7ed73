"""Live equals replay: a certified policy served in front of a chat upstream, against its replay.

For each set (default: the bundled qwq_gsm8k and r1_gsm8k, real QwQ-32B and
DeepSeek-R1 chains):

1. ``stopwise bench`` picks the best certified single-chain family on the
   calibration half (its ``recommended`` row at epsilon 0.05, delta 0.1), and
   ``stopwise calibrate`` writes its policy file (certified at delta/K, K the
   families bench chose among);
2. the upstream is ``stopwise serve --backend trace:SET?rate=0``: it replays the
   set's real chains token by token over ``/v1/chat/completions``, the thinking
   as ``reasoning_content`` (as vLLM with a reasoning parser), the chain of the
   question asked;
3. ``stopwise serve --upstream-api chat --policy FILE`` serves the policy in
   front of it (text-derived probes read live from the stream);
4. every test-half question goes through the official ``openai`` SDK, streaming,
   8 in flight.

Live figures come from what the client received (the ``stopwise`` object of the
last chunk: tokens delivered to the policy, its answer); replay figures from the
reference replay of the same policy file on the same questions. The chains are
the same, so the two must agree; ``decisions_equal`` is the share of questions
where live stopped at the very position replay stopped, with the same answer.
``live_generated_saved`` also charges what the upstream streamed past the stop
(the handle's read-ahead, and tokens in flight when the cancel arrived).

Usage::

    python benchmarks/live_replay.py [--sets qwq_gsm8k,r1_gsm8k] [--concurrency 8]

Writes ``benchmarks/results/live_replay.json``: a list of one object per set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import command_line, free_port, machine, wait_up, write_result  # noqa: E402

MAX_TOKENS = 20000


def pick_family(set_dir: str, work: Path, epsilon: float, delta: float) -> tuple[dict, int]:
    """bench's recommended single-chain row on the set, and how many certified rows it chose among."""
    out = work / "rows.json"
    subprocess.run([sys.executable, "-m", "stopwise.cli.main", "bench", "--traces", set_dir, "--no-decisions",
                    "--epsilon", str(epsilon), "--delta", str(delta), "--json", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    rows = json.loads(out.read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    rec = [r for r in rows if r.get("recommended") and r.get("chains_saved", 0) == 0 and r["policy"] != "full_compute"]
    if not rec:
        raise SystemExit(f"{set_dir}: bench recommends no single-chain family (keep full compute): nothing to serve")
    k = sum(1 for r in rows if r.get("certified") and r["policy"] != "full_compute")
    return rec[0], max(1, k)


def replay(policy_path: Path, set_dir: str) -> dict:
    """The policy file's own setting replayed on every question: per-question tokens, answer class, loss."""
    from stopwise.policies.base import unit_losses
    from stopwise.policies.registry import prepare_family
    from stopwise.traces.io import read_trace_set

    doc = json.loads(policy_path.read_text())
    ts = read_trace_set(set_dir)
    fam = prepare_family(doc["family"], ts, **(doc.get("settings") or {}))
    res = fam.replay(ts)
    j = int(doc["index"])
    loss = unit_losses(res, doc.get("risk", "disagreement"))[:, j]
    return {"doc": doc, "ts": ts, "unit_question": res.unit_question, "tokens": res.tokens[:, j] + res.probe_tokens[:, j],
            "answer": res.answer[:, j], "full_answer": res.answer_full, "full_tokens": res.tokens_full, "loss": loss}


def classify(answer: str | None, class_answers: list[str]) -> int:
    """The set's class of a live answer (the same equivalence as at import), -1 if missing or new."""
    from stopwise.answers import AnswerChecker, normalize

    if answer is None or not str(answer).strip():
        return -1
    checker = AnswerChecker()
    for i, ref in enumerate(class_answers or []):
        if ref is not None and (normalize(str(ref)) == normalize(str(answer)) or checker.equivalent(str(answer), str(ref))):
            return i
    return -2  # an answer no chain of the set gave


async def ask_all(url: str, questions: list[str], concurrency: int, max_tokens: int) -> list[dict]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)

    async def one(q: str) -> dict:
        async with gate:
            stream = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": q}],
                                                          max_tokens=max_tokens, stream=True, seed=0)
            reasoning, content, sw, usage = [], [], None, None
            async for chunk in stream:
                for ch in chunk.choices:
                    extra = ch.delta.model_extra or {}
                    if extra.get("reasoning_content"):
                        reasoning.append(extra["reasoning_content"])
                    if ch.delta.content:
                        content.append(ch.delta.content)
                sw = (chunk.model_extra or {}).get("stopwise") or sw
                usage = chunk.usage or usage
            if sw is None:
                raise SystemExit(f"no stopwise object in the response to {q[:60]!r}")
            return {"stopwise": sw, "usage": usage.model_dump() if usage else None,
                    "reasoning_chars": sum(map(len, reasoning)), "content": "".join(content)}

    try:
        return list(await asyncio.gather(*(one(q) for q in questions)))
    finally:
        await client.close()


def run_set(name: str, args: argparse.Namespace, work: Path) -> dict:
    from stopwise.data import bundled_path
    from stopwise.stats.split import split_mask

    set_dir = str(bundled_path(name))
    row, k = pick_family(set_dir, work, args.epsilon, args.delta)
    policy = work / f"{name}.policy.json"
    subprocess.run([sys.executable, "-m", "stopwise.cli.main", "calibrate", "--traces", set_dir, "--policy", row["policy"],
                    "--epsilon", str(args.epsilon), "--delta", str(args.delta), "--k-policies", str(k), "--out", str(policy)],
                   check=True, stdout=subprocess.DEVNULL)
    rp = replay(policy, set_dir)
    ts, doc = rp["ts"], rp["doc"]
    qids = ts.questions.column("question_id").to_pylist()
    test = np.flatnonzero(~split_mask(qids))
    if args.limit:
        test = test[: args.limit]
    units = {int(q): u for u, q in enumerate(rp["unit_question"])}  # one chain per question on these sets
    questions = ts.questions.column("question").to_pylist()
    class_answers = ts.questions.column("class_answers").to_pylist()

    exe = [sys.executable, "-m", "stopwise.cli.main", "serve"]
    up_port, px_port = free_port(), free_port()
    logs = [open(work / f"{name}.upstream.log", "w"), open(work / f"{name}.proxy.log", "w")]  # noqa: SIM115
    up = subprocess.Popen([*exe, "--backend", f"trace:{set_dir}?rate={args.rate}", "--port", str(up_port),
                           "--max-concurrent", "64", "--max-tokens-limit", str(MAX_TOKENS)], stdout=logs[0], stderr=subprocess.STDOUT)
    px = None
    try:
        upstream = f"http://127.0.0.1:{up_port}"
        wait_up(upstream)
        px = subprocess.Popen([*exe, "--backend", upstream, "--upstream-api", "chat", "--policy", str(policy), "--port", str(px_port),
                               "--max-concurrent", str(2 * args.concurrency), "--max-tokens-limit", str(MAX_TOKENS)],
                              stdout=logs[1], stderr=subprocess.STDOUT)
        proxy = f"http://127.0.0.1:{px_port}"
        wait_up(proxy)
        t0 = time.monotonic()
        answers = asyncio.run(ask_all(proxy, [questions[q] for q in test], args.concurrency, MAX_TOKENS))
        wall = time.monotonic() - t0
    finally:
        for p in (px, up):
            if p is not None:
                p.terminate()
                p.wait(10)
        for f in logs:
            f.close()

    full = live_tok = live_gen = rep_tok = 0
    live_loss, rep_loss, equal = [], [], 0
    for q, a in zip(test, answers):
        u = units[int(q)]
        sw = a["stopwise"]
        full += int(rp["full_tokens"][u])
        live_tok += int(sw["tokens"]) + int(sw.get("probe_tokens") or 0)
        live_gen += int(sw["generated_tokens"]) + int(sw.get("probe_tokens") or 0)
        rep_tok += int(rp["tokens"][u])
        cls = classify(sw.get("answer"), class_answers[q])
        live_loss.append(float(cls < 0 or cls != int(rp["full_answer"][u]) or bool(sw.get("abstained"))))
        rep_loss.append(float(rp["loss"][u]))
        equal += int(int(sw["tokens"]) == int(rp["tokens"][u]) and cls == int(rp["answer"][u]))
    n = len(test)
    out = {
        "set": name,
        "questions": n,
        "live_tokens_saved": 1 - live_tok / full,
        "replay_tokens_saved": 1 - rep_tok / full,
        "live_disagreement": float(np.mean(live_loss)),
        "replay_disagreement": float(np.mean(rep_loss)),
        "client": f"openai {__import__('openai').__version__} AsyncOpenAI, streaming, {args.concurrency} in flight",
        "family": doc["family"],
        "setting": doc["threshold"],
        "epsilon": args.epsilon,
        "delta": args.delta,
        "k_policies": k,
        "calibration_saved": (doc.get("selection") or {}).get("calibration_saved"),
        "decisions_equal": equal / n,
        "live_generated_saved": 1 - live_gen / full,
        "full_tokens": full,
        "upstream": f"stopwise serve --backend trace:{name}?rate={args.rate} (chat, reasoning_content)",
        "wall_s": round(wall, 1),
    }
    print(f"{name}: {n} questions, {out['family']} at {out['setting']:g}: tokens saved live {out['live_tokens_saved']:.4f} / "
          f"replay {out['replay_tokens_saved']:.4f}; disagreement live {out['live_disagreement']:.4f} / replay {out['replay_disagreement']:.4f}; "
          f"same decision on {out['decisions_equal']:.1%}; {wall:.0f} s")
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="qwq_gsm8k,r1_gsm8k")
    ap.add_argument("--epsilon", type=float, default=0.05)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rate", type=float, default=0, help="upstream tokens/s per stream (0: as fast as it can)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N test questions (smoke runs)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "live_replay.json"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets.split(","):
            rows.append(run_set(name.strip(), args, Path(tmp)))
    for r in rows:
        r["command"] = command_line(argv)
        r["machine"] = machine()
    write_result(args.out, rows)
    return rows


if __name__ == "__main__":
    main()
