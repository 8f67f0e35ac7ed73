"""Proxy overhead: stopwise serve (policy off) in front of an upstream, against the upstream directly.

Three processes on loopback, started here:

* the upstream: ``stopwise serve --backend trace:SET?rate=R`` streams logged chains of a
  bundled trace set at R tokens/s per stream (fast and predictable, so stopwise is what
  is measured);
* the proxy: ``stopwise serve --backend http://upstream`` with no policy (pass-through);
* the load generator: this script's ``--worker`` mode in a separate process, which opens
  C concurrent streaming chat requests with httpx and records, per request, the time to
  first token and the gaps between tokens.

For C in 1, 16, 64 it runs the same load directly against the upstream and through the
proxy, side by side, ``--repeats`` times alternating (one burst is under a second, and
this machine is shared), and reports the median burst's time to first token, inter-token
latency and aggregate throughput, the ratios, and the proxy's CPU-seconds per 1,000
streamed tokens (from /proc). Writes JSON.

Usage::

    python benchmarks/proxy_overhead.py                  # rate 200 tok/s, 64 tokens per stream
    python benchmarks/proxy_overhead.py --rate 100 --tokens 128 --concurrency 1,16,64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import command_line, free_port, machine, wait_up, write_result  # noqa: E402


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


async def one_stream(client, url: str, tokens: int, seed: int) -> dict:
    body = {"model": "m", "messages": [{"role": "user", "content": f"q{seed}"}], "max_tokens": tokens, "stream": True, "seed": seed, "stopwise": {"policy": "off"}}
    t0 = time.perf_counter()
    times = []
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                obj = json.loads(line[6:])
                ch = (obj.get("choices") or [{}])[0]
                delta = ch.get("delta") or {}
                if delta.get("content") or delta.get("reasoning_content"):  # a reasoning model's thinking counts too
                    times.append(time.perf_counter())
    return {"ttft": times[0] - t0 if times else None, "gaps": [b - a for a, b in zip(times, times[1:])], "tokens": len(times), "wall": time.perf_counter() - t0}


async def run_load(url: str, concurrency: int, tokens: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await one_stream(client, url, 4, 10**6)  # warm-up
        t0 = time.perf_counter()
        res = await asyncio.gather(*(one_stream(client, url, tokens, i) for i in range(concurrency)))
        wall = time.perf_counter() - t0
    ttft = [r["ttft"] for r in res if r["ttft"] is not None]
    gaps = [g for r in res for g in r["gaps"]]
    total = sum(r["tokens"] for r in res)
    return {
        "concurrency": concurrency,
        "ttft_median_ms": statistics.median(ttft) * 1000,
        "itl_median_ms": statistics.median(gaps) * 1000 if gaps else None,
        "tokens": total,
        "wall_s": wall,
        "throughput_tok_s": total / wall,
    }


def worker(args: argparse.Namespace) -> None:
    out = asyncio.run(run_load(args.url, args.c, args.tokens))
    print(json.dumps(out))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=200.0, help="upstream tokens/s per stream")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--repeats", type=int, default=5, help="bursts per set-up and concurrency, alternating direct and proxy; medians reported")
    ap.add_argument("--traces", default=None, help="trace set the upstream streams (default: bundled qwq_gsm8k)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "proxy_overhead.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--c", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return {}

    from stopwise.data import bundled_path

    traces = args.traces or str(bundled_path("qwq_gsm8k"))
    up_port, px_port = free_port(), free_port()
    exe = [sys.executable, "-m", "stopwise.cli.main", "serve"]
    up = subprocess.Popen([*exe, "--backend", f"trace:{traces}?rate={args.rate}", "--port", str(up_port), "--max-concurrent", "256"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    upstream = f"http://127.0.0.1:{up_port}"
    wait_up(upstream)
    px = subprocess.Popen([*exe, "--backend", upstream, "--port", str(px_port), "--max-concurrent", "256"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = f"http://127.0.0.1:{px_port}"
    wait_up(proxy)
    rows = []
    try:
        for c in [int(x) for x in args.concurrency.split(",")]:
            row = {"concurrency": c, "repeats": args.repeats}
            runs: dict[str, list[dict]] = {"direct": [], "proxy": []}
            for _ in range(args.repeats):  # alternate, so drift on a shared machine hits both alike
                for name, url in (("direct", upstream), ("proxy", proxy)):
                    cpu0 = cpu_seconds(px.pid)
                    res = subprocess.run([sys.executable, __file__, "--worker", "--url", url, "--c", str(c), "--tokens", str(args.tokens)], capture_output=True, text=True, check=True)
                    r = json.loads(res.stdout.strip().splitlines()[-1])
                    r["proxy_cpu_s"] = cpu_seconds(px.pid) - cpu0
                    runs[name].append(r)
            for name, rs in runs.items():  # the median run of each measure
                row[name] = {
                    "concurrency": c,
                    "ttft_median_ms": statistics.median(r["ttft_median_ms"] for r in rs),
                    "itl_median_ms": statistics.median(r["itl_median_ms"] for r in rs if r["itl_median_ms"] is not None),
                    "tokens": sum(r["tokens"] for r in rs),
                    "throughput_tok_s": statistics.median(r["throughput_tok_s"] for r in rs),
                    "proxy_cpu_s": sum(r["proxy_cpu_s"] for r in rs),
                    "runs": rs,
                }
            d, p = row["direct"], row["proxy"]
            row["ttft_added_ms"] = p["ttft_median_ms"] - d["ttft_median_ms"]
            row["throughput_ratio"] = p["throughput_tok_s"] / d["throughput_tok_s"]
            row["proxy_cpu_s_per_1k_tokens"] = p["proxy_cpu_s"] / max(p["tokens"], 1) * 1000
            rows.append(row)
            print(
                f"C={c:3d}  TTFT direct {d['ttft_median_ms']:7.2f} ms  proxy {p['ttft_median_ms']:7.2f} ms  (+{row['ttft_added_ms']:.2f} ms)  "
                f"ITL {d['itl_median_ms']:.2f}/{p['itl_median_ms']:.2f} ms  throughput {d['throughput_tok_s']:8.1f}/{p['throughput_tok_s']:8.1f} tok/s "
                f"(x{row['throughput_ratio']:.3f})  proxy CPU {row['proxy_cpu_s_per_1k_tokens']:.3f} s/1k tok",
                flush=True,
            )
    finally:
        for proc in (px, up):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    result = {
        "benchmark": "proxy_overhead",
        "command": command_line(argv),
        "upstream_rate_tok_s_per_stream": args.rate,
        "repeats": args.repeats,
        "tokens_per_stream": args.tokens,
        "machine": machine(),
        "rows": rows,
    }
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
