"""The OpenAI-compatible HTTP backend against a real upstream on loopback:
``python -m llama_cpp.server`` serving SmolLM2-135M, plus small misbehaving
servers for the error paths.

llama_cpp.server ignores ``ignore_eos``, so a sampled chain's length is the
model's (and the CPU's): tests that need tokens use greedy decoding on a prompt
that gives them, and assert nothing about a sampled chain's length."""

import asyncio
import subprocess
import sys
import time

import pytest
from net_helpers import fake_upstream, free_port, read_request, wait_http_ok

from stopwise.backends.base import Sampling
from stopwise.errors import BackendError



@pytest.fixture(scope="module")
def upstream(smollm2_path, tmp_path_factory):
    import importlib.util

    if importlib.util.find_spec("sse_starlette") is None:
        pytest.skip("llama-cpp-python[server] not installed")
    port = free_port()
    log = tmp_path_factory.mktemp("srv") / "server.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", smollm2_path, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "2"],
            stdout=f, stderr=subprocess.STDOUT,
        )

    url = f"http://127.0.0.1:{port}"
    if not wait_http_ok(url + "/v1/models", 120):
        proc.kill()
        pytest.fail("llama_cpp.server did not start: " + log.read_text()[-2000:])
    yield url, log
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def backend(url, **kw):
    from stopwise.backends.openai_compat import OpenAICompatBackend

    return OpenAICompatBackend(url, **kw)


def test_stream_with_logprobs_and_chat(upstream):
    url, _ = upstream

    async def main():
        be = backend(url)
        try:
            prompt = be.render_chat([{"role": "user", "content": "Name three colors."}])
            steps = [s async for s in be.stream(prompt, Sampling(temperature=0.0, max_tokens=12))]  # greedy: mechanics
            assert 1 <= len(steps) <= 12
            for s in steps:
                assert s.logprob <= 0 and len(s.top_logprobs) == 5
                assert s.top_logprobs == sorted(s.top_logprobs, reverse=True)
                assert s.top_logprobs[0] >= s.logprob - 1e-6
            chat = [s async for s in be.stream_chat([{"role": "user", "content": "Say hi."}], Sampling(temperature=0.0, max_tokens=6))]
            assert chat and "".join(s.text for s in chat).strip()
        finally:
            await be.aclose()

    asyncio.run(main())


def test_n_is_detected_and_parallel_fallback(upstream):
    url, _ = upstream

    async def main():
        be = backend(url)
        try:
            prompt = be.render_chat([{"role": "user", "content": "Pick a number."}])
            res = await be.sample(prompt, Sampling(temperature=1.0, max_tokens=5, seed=1), 3)
            # a sampled chain may draw end-of-sequence first: each ends by its stop or its length
            assert len(res) == 3 and all(r.steps or r.finish_reason == "stop" for r in res)
            assert all(len(r.steps) <= 5 for r in res)
            assert be.n_supported is False  # llama_cpp.server ignores n
            assert [r.seed for r in res] == [1, 2, 3]  # its one answer keeps the seed; the fallback's get their own
        finally:
            await be.aclose()

    asyncio.run(main())


def test_prefix_continuation_probe(upstream):
    url, _ = upstream

    async def main():
        be = backend(url)
        try:
            prompt = be.render_chat([{"role": "user", "content": "What is 2 + 3?"}])
            steps = [s async for s in be.stream(prompt, Sampling(temperature=0.0, max_tokens=8))]
            text, lp, prefill, dec = await be.continue_prefix(prompt, steps, "\nFinal answer: \\boxed{", 6)
            assert isinstance(text, str) and 1 <= dec <= 6 and prefill > len(steps) and lp <= 0
            # the continuation equals a plain greedy completion of the same text
            full = prompt + "".join(s.text for s in steps) + "\nFinal answer: \\boxed{"
            again = [s async for s in be.stream(full, Sampling(temperature=0.0, top_k=0, top_p=1.0, max_tokens=6))]
            k = min(2, len(text))  # the probe's text ends at its answer's closing brace (or before a newline)
            assert k >= 1 and "".join(s.text for s in again)[:k] == text[:k]
        finally:
            await be.aclose()

    asyncio.run(main())


def test_closing_a_stream_stops_the_upstream_generation(upstream):
    """An abandoned chain must not keep the (one-at-a-time) upstream busy."""
    url, log = upstream

    async def main():
        be = backend(url)
        try:
            prompt = be.render_chat([{"role": "user", "content": "Write a very long story about a dragon."}])
            # greedy: the stream must reach 5 tokens whatever the CPU (a seeded sample may end sooner)
            agen = be.stream(prompt, Sampling(temperature=0.0, max_tokens=3000))
            n = 0
            async for _ in agen:
                n += 1
                if n == 5:
                    break
            await agen.aclose()
            t = time.monotonic()
            res = await be.sample(prompt, Sampling(temperature=0.0, max_tokens=4), 1)
            waited = time.monotonic() - t
            return n, res, waited
        finally:
            await be.aclose()

    n, res, waited = asyncio.run(main())
    assert n == 5 and res[0].steps
    # 3000 tokens at SmolLM2's speed on 2 cores take well over 20 s; the next request
    # is served at once because the abandoned generation stopped
    assert waited < 15, f"next request waited {waited:.1f} s: the abandoned stream kept generating"
    for _ in range(50):
        if "Disconnected from client" in log.read_text():
            break
        time.sleep(0.1)
    assert "Disconnected from client" in log.read_text()


# ---- misbehaving upstreams ---------------------------------------------------------------






def test_dead_upstream_is_a_retryable_error_not_a_hang():
    port = free_port()  # nothing listens here

    async def main():
        be = backend(f"http://127.0.0.1:{port}", model="m", retries=0)
        try:
            with pytest.raises(BackendError, match="cannot connect") as ei:
                [s async for s in be.stream("x", Sampling(max_tokens=3))]
            assert ei.value.retryable
        finally:
            await be.aclose()

    t = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - t < 10


def test_stalled_upstream_times_out():
    def stall(conn, stop):
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        conn.sendall(b'data: {"choices": [{"text": "a", "index": 0}]}\n\n')
        stop.wait(30)
        conn.close()

    url, close = fake_upstream(stall)

    async def main():
        be = backend(url, model="m", read_timeout=1.0)
        got = []
        try:
            with pytest.raises(BackendError, match="timed out") as ei:
                async for s in be.stream("x", Sampling(max_tokens=3)):
                    got.append(s)
            assert ei.value.retryable and [s.text for s in got] == ["a"]
        finally:
            await be.aclose()

    t = time.monotonic()
    try:
        asyncio.run(main())
    finally:
        close()
    assert time.monotonic() - t < 8


def test_garbage_and_http_errors_are_named():
    def garbage(conn, stop):
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: {not json\n\n")
        conn.close()

    def refuse(conn, stop):
        read_request(conn)
        body = b'{"error": {"message": "model not found", "type": "invalid_request_error"}}'
        conn.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        conn.close()

    async def main(url, match, retryable):
        be = backend(url, model="m", retries=0)
        try:
            with pytest.raises(BackendError, match=match) as ei:
                [s async for s in be.stream("x", Sampling(max_tokens=3))]
            assert ei.value.retryable is retryable
        finally:
            await be.aclose()

    for handler, match, retry in [(garbage, "malformed stream chunk", True), (refuse, "HTTP 404: model not found", False)]:
        url, close = fake_upstream(handler)
        try:
            asyncio.run(main(url, match, retry))
        finally:
            close()


def test_collect_through_the_http_backend(upstream, tmp_path):
    """`stopwise collect --model http://...` against the real upstream: chains, logprobs, probes."""
    from stopwise.collect import CollectConfig, collect
    from stopwise.traces.io import read_trace_set

    url, _ = upstream
    cfg = CollectConfig(dataset="gsm8k", model=url, questions=2, chains=2, max_tokens=24, probe_every=8, batch_chains=2)
    ts = read_trace_set(collect(cfg, tmp_path / "http"))
    assert ts.n_questions == 2 and ts.n_chains == 4
    for r in ts.chains.to_pylist():
        assert r["n_tokens"] == len(r["tokens"]) == len(r["token_logprobs"]) and r["entropy"] is None
        assert all(len(t) == 5 for t in r["top_logprobs"])
        sched = [p for p, c in zip(r["probe_position"], r["probe_cue"]) if c == "schedule"]
        assert sched == [p for p in (8, 16) if p < r["n_tokens"]] and all(c > 0 for c in r["probe_cost"])
    assert "OpenAI-compatible server" in ts.provenance.model


def test_streams_reuse_one_upstream_connection_and_a_stalled_tail_is_cut_off():
    """After ``[DONE]`` the backend reads the end of the chunked body, so the next request reuses the
    connection (fake upstream that counts connections); an upstream that stalls after ``[DONE]``
    costs at most the drain's deadline, and the stream still ends cleanly."""
    import json as _json

    accepted = []

    def sse(stall_after_done):
        def handler(conn, stop):
            accepted.append(1)
            try:
                while not stop.is_set():
                    read_request(conn)
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                    for t in ("a", "b", "c"):
                        ev = b"data: " + _json.dumps({"choices": [{"index": 0, "text": t, "logprobs": None}]}).encode() + b"\n\n"
                        conn.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
                    done = b"data: [DONE]\n\n"
                    conn.sendall(b"%x\r\n%s\r\n" % (len(done), done))
                    if stall_after_done:
                        stop.wait(10)
                        return
                    conn.sendall(b"0\r\n\r\n")
            except OSError:
                pass
            finally:
                conn.close()

        return handler

    async def main(url, n):
        be = backend(url, model="m", retries=0)
        try:
            out = []
            for _ in range(n):
                t0 = time.monotonic()
                out.append(("".join([s.text async for s in be.stream("x", Sampling(max_tokens=3), logprobs=False)]), time.monotonic() - t0))
            return out
        finally:
            await be.aclose()

    url, close = fake_upstream(sse(False))
    try:
        out = asyncio.run(main(url, 3))
    finally:
        close()
    assert [t for t, _ in out] == ["abc"] * 3 and len(accepted) == 1

    accepted.clear()
    url, close = fake_upstream(sse(True))
    try:
        out = asyncio.run(main(url, 2))
    finally:
        close()
    assert [t for t, _ in out] == ["abc"] * 2 and all(dt < 5 for _, dt in out)
    assert len(accepted) == 2  # the stalled connection was not reused
