"""Embedded throughput: aggregate tokens/s of 1, 2, 4, 8 chains decoded together.

Same model, same prompt (a GSM8K question in the model's chat template), same
sampling settings (temperature 0.7, top-p 0.95, top-k 40) in one run:

* ``stopwise batch, N chains``: :class:`stopwise.backends.llama_engine.BatchEngine`
  decoding N chains of one prompt together (one ``llama_decode`` per step, the
  prompt prefilled once and shared), with the numpy per-token statistics
  (chosen logprob, top-5, entropy, top-20 confidence) computed for every token;
* ``llama-cpp-python loop``: the high-level ``Llama.create_completion`` run N
  times one after the other (no logprobs), the plain single-chain loop a user
  would write, as an outside reference.

The ratio column divides each aggregate rate by the stopwise 1-chain rate.
Wall-clock includes prompt prefill. Chains may end early at the end-of-turn
token; the rate counts the tokens actually generated.

Usage::

    python benchmarks/embedded_throughput.py                      # embedded 0.5B, 128 tokens
    python benchmarks/embedded_throughput.py --model smollm2 --tokens 64
    # the same with the AVX-512 build of scripts/build_native_llama.sh (collection only)
    PYTHONPATH=build/native/site python benchmarks/embedded_throughput.py --out benchmarks/results/embedded_throughput_avx512.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import command_line, machine, write_result  # noqa: E402

QUESTION = (
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins "
    "for her friends every day with four. She sells the remainder at the farmers' market daily for $2 "
    "per fresh duck egg. How much in dollars does she make every day at the farmers' market?"
)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--tokens", type=int, default=128, help="max tokens per chain")
    ap.add_argument("--chains", default="1,2,4,8")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-llama-loop", action="store_true", help="skip the llama-cpp-python reference loop")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "embedded_throughput.json"))
    args = ap.parse_args(argv)

    from stopwise.backends.base import Sampling
    from stopwise.backends.chat import render_chat_template
    from stopwise.backends.llama_engine import BatchEngine
    from stopwise.datasets import MATH_SYSTEM
    from stopwise.models import resolve_model

    model = resolve_model(args.model)
    counts = [int(x) for x in args.chains.split(",")]
    eng = BatchEngine(str(model.path), n_ctx_seq=512 + args.tokens, n_seq_max=max(counts) + 2, n_threads=args.threads)
    msgs = [{"role": "system", "content": MATH_SYSTEM}, {"role": "user", "content": QUESTION}]
    prompt = render_chat_template(eng.metadata["tokenizer.chat_template"], msgs)
    ids = eng.tokenize_prompt(prompt)
    print(f"{model.title}, {eng.build}, {args.threads} threads", flush=True)

    def batch_run(n: int) -> tuple[int, float]:
        eng.submit(ids, [Sampling(0.7, 0.95, 40, args.tokens, seed=100 + i) for i in range(n)])
        t = time.perf_counter()
        toks = 0
        while eng.n_active:
            toks += sum(1 for ev in eng.step() if ev.kind == "token")
        return toks, time.perf_counter() - t

    batch_run(1)  # warm-up (page in the weights)
    rows = []
    base = None
    for n in counts:
        toks, dt = batch_run(n)
        rate = toks / dt
        base = base or rate
        rows.append({"runner": "stopwise batch", "chains": n, "tokens": toks, "seconds": round(dt, 3), "tokens_per_s": round(rate, 2), "ratio_to_1_chain": round(rate / base, 2)})
        print(f"stopwise batch   {n:2d} chains  {toks:5d} tokens  {dt:7.2f} s  {rate:7.2f} tok/s  x{rate / base:.2f}", flush=True)
    eng.close()
    if not args.no_llama_loop:
        from llama_cpp import Llama

        llm = Llama(str(model.path), n_ctx=512 + args.tokens, n_threads=args.threads, verbose=False)
        llm.create_completion(ids, max_tokens=4)
        for n in counts:
            t = time.perf_counter()
            toks = 0
            for i in range(n):
                out = llm.create_completion(ids, max_tokens=args.tokens, temperature=0.7, top_p=0.95, top_k=40, seed=100 + i)
                toks += out["usage"]["completion_tokens"]
            dt = time.perf_counter() - t
            rate = toks / dt
            rows.append({"runner": "llama-cpp-python loop", "chains": n, "tokens": toks, "seconds": round(dt, 3), "tokens_per_s": round(rate, 2), "ratio_to_1_chain": round(rate / base, 2)})
            print(f"llama-cpp loop   {n:2d} chains  {toks:5d} tokens  {dt:7.2f} s  {rate:7.2f} tok/s  x{rate / base:.2f}", flush=True)
    result = {
        "benchmark": "embedded_throughput",
        "command": command_line(argv),
        "model": model.title,
        "model_sha256": model.sha256,
        "max_tokens": args.tokens,
        "threads": args.threads,
        "llama_cpp_build": eng.build,
        "machine": machine(),
        "rows": rows,
    }
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
