"""The HTTP backend against fake upstreams (raw loopback sockets, named as fakes) that
misbehave in ways real servers do: keep-alive comments with no tokens, a body trickled
byte by byte, logprob arrays of different lengths, no logprobs, no choices, a JSON body
to a streamed request, HTTP errors, bad URLs and model lists. Each must end in a
BackendError that says what happened, promptly, and never in a shortened chain."""

import asyncio
import json
import threading
import time

import pytest
from net_helpers import fake_upstream, read_request

from stopwise.backends.base import Sampling
from stopwise.backends.openai_compat import OpenAICompatBackend
from stopwise.errors import BackendError


def _http(status, body, ctype="application/json", extra=b""):
    """A whole response; it says ``connection: close``, since every fake here closes the connection after
    it (else the client may race the close and send its next request down the dead kept-alive one)."""
    body = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n%s\r\n%s"
            % (status, ctype.encode(), len(body), extra, body))


def _sse(*events):
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"
    return head + b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n" for e in events)


def _serve(payload, count=None):
    """A fake upstream that answers every request with ``payload`` (bytes), counting requests."""
    seen = count if count is not None else []

    def handler(conn, stop):
        read_request(conn)
        seen.append(1)
        conn.sendall(payload)
        conn.close()

    return fake_upstream(handler)


def _send_every(conn, payload, seconds, *stops, times=10_000):
    """Send ``payload`` every ``seconds`` until a stop event is set, the client hangs up or ``times`` sends."""
    for _ in range(times):
        if any(ev.is_set() for ev in stops):
            return
        try:
            conn.sendall(payload)
        except OSError:
            return
        time.sleep(seconds)


def _run(url, coro_fn, **kw):
    async def main():
        be = OpenAICompatBackend(url, **{"model": "m", "retries": 0, **kw})
        try:
            return await coro_fn(be)
        finally:
            await be.aclose()

    return asyncio.run(main())


async def _collect_stream(be, **kw):
    return [s async for s in be.stream("x", Sampling(max_tokens=4), **kw)]


def _lp(tokens, n_top=None):
    n_top = len(tokens) if n_top is None else n_top
    return {"tokens": tokens, "token_logprobs": [-0.5] * len(tokens), "top_logprobs": [{"a": -0.5, "b": -1.5}] * n_top}


def test_logprob_arrays_of_different_lengths_are_an_error_not_a_shorter_chain():
    url, close = _serve(_sse({"choices": [{"text": "Hello world", "logprobs": _lp(["Hel", "lo", " world"], n_top=1)}]}, b"[DONE]"))
    try:
        with pytest.raises(BackendError, match="malformed logprobs.*3, 3 and 1 entries") as e:
            _run(url, _collect_stream)
        assert not e.value.retryable and "OpenAI-compatible" in e.value.hint
    finally:
        close()


def test_text_without_logprobs_is_refused_only_where_they_are_required():
    url, close = _serve(_sse({"choices": [{"text": "Hi"}]}, b"[DONE]"))
    try:
        assert [s.text for s in _run(url, _collect_stream)] == ["Hi"]  # a proxy can pass it on
        with pytest.raises(BackendError, match="text without logprobs") as e:
            _run(url, lambda be: _collect_stream(be, require_logprobs=True))
        assert "does not return logprobs" in e.value.hint
    finally:
        close()


@pytest.mark.parametrize("event, match", [
    ({"id": "x", "object": "text_completion"}, "carried no choices"),
    ({"choices": "abc"}, "no list of choice objects"),
    ({"choices": [{"text": "a", "logprobs": {"tokens": ["a"], "token_logprobs": ["high"], "top_logprobs": [None]}}]}, "malformed logprobs"),
])
def test_malformed_stream_events_are_named(event, match):
    url, close = _serve(_sse(event, b"[DONE]"))
    try:
        with pytest.raises(BackendError, match=match):
            _run(url, _collect_stream)
    finally:
        close()


def test_a_json_body_to_a_streamed_request_is_named_not_retried():
    url, close = _serve(_http(200, {"choices": [{"text": "a"}]}))
    try:
        with pytest.raises(BackendError, match="non-stream body \\(content-type application/json\\)") as e:
            _run(url, _collect_stream)
        assert not e.value.retryable
    finally:
        close()


def test_keep_alive_comments_without_tokens_end_the_stream():
    def pinger(conn, stop):
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        conn.sendall(b'data: {"choices": [{"text": "a", "index": 0}]}\n\n')
        _send_every(conn, b": ping\n\n", 0.2, stop)
        conn.close()

    url, close = fake_upstream(pinger)
    t = time.monotonic()
    try:
        with pytest.raises(BackendError, match="sent no token for 1 s \\(only keep-alive comments\\)") as e:
            _run(url, _collect_stream, read_timeout=1.0)
        assert e.value.retryable
    finally:
        close()
    assert time.monotonic() - t < 10


def test_a_body_trickled_byte_by_byte_cannot_hold_a_probe_forever():
    body = json.dumps({"choices": [{"text": "4"}]}).encode()
    stop_all = threading.Event()

    def trickle(conn, stop):
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % (len(body) * 100))
        _send_every(conn, b" ", 0.3, stop, stop_all)
        conn.close()

    url, close = fake_upstream(trickle)
    t = time.monotonic()
    try:
        with pytest.raises(BackendError, match="did not finish its answer within 3 s"):
            _run(url, lambda be: be.continue_prefix("q", [], "A:", 4), read_timeout=1.0, connect_timeout=1.0)
    finally:
        stop_all.set()
        close()
    assert time.monotonic() - t < 15


@pytest.mark.parametrize("status, hint", [(401, "API key"), (404, "check the URL"), (429, "rate-limiting"), (503, "resumes")])
def test_http_errors_carry_a_hint(status, hint):
    url, close = _serve(_http(status, {"error": {"message": "nope"}}))
    try:
        with pytest.raises(BackendError, match=f"HTTP {status}: nope") as e:
            _run(url, _collect_stream)
        assert hint in e.value.hint and e.value.status == status
    finally:
        close()


def test_generation_is_not_retried_but_probes_are():
    seen = []
    url, close = _serve(_http(500, {"error": {"message": "boom"}}), seen)
    try:
        with pytest.raises(BackendError, match="HTTP 500"):
            _run(url, lambda be: be.sample("x", Sampling(max_tokens=3, seed=7), 1), retries=2)
        assert len(seen) == 1
        with pytest.raises(BackendError, match="HTTP 500"):
            _run(url, lambda be: be.continue_prefix("q", [], "A:", 4), retries=2)
        assert len(seen) == 1 + 3
    finally:
        close()


def _recording_upstream(answer: dict):
    """A fake upstream that answers every request with ``answer`` and records the JSON bodies it was sent."""
    bodies: list[dict] = []

    def handler(conn, stop):
        bodies.append(json.loads(read_request(conn)[1]))
        conn.sendall(_http(200, answer))
        conn.close()

    url, close = fake_upstream(handler)
    return bodies, url, close


def test_a_probe_is_read_and_paid_for_up_to_its_answers_end():
    """A server that writes on after the closing brace: the probe's text, logprob and decoded tokens
    stop at the answer's end (as the embedded engine decodes a probe), and it is asked to stop at a
    newline."""
    answer = {"choices": [{"text": "18}$. So", "logprobs": {
        "tokens": ["1", "8", "}", "$.", " So"], "token_logprobs": [-0.5, -0.25, -0.125, -2.0, -3.0],
        "top_logprobs": [{"1": -0.5}, {"8": -0.25}, {"}": -0.125}, {"$.": -2.0}, {" So": -3.0}]}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 5}}
    bodies, url, close = _recording_upstream(answer)
    try:
        text, lp, prefill, dec = _run(url, lambda be: be.continue_prefix("q", [], "A: \\boxed{", 8))
    finally:
        close()
    assert (text, lp, prefill, dec) == ("18}", -0.875, 30, 3)
    assert bodies[0]["stop"] == ["\n"] and bodies[0]["temperature"] == 0.0


def test_ignore_eos_is_sent_only_when_asked():
    """``Sampling(ignore_eos=True)`` reaches the upstream as vLLM's and llama.cpp server's ``ignore_eos``; by
    default the field is absent, so an upstream that rejects unknown fields (OpenAI's) never sees it."""
    answer = {"choices": [{"text": "ok", "logprobs": {"tokens": ["ok"], "token_logprobs": [-0.5], "top_logprobs": [{"ok": -0.5}]},
                           "finish_reason": "length"}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    bodies, url, close = _recording_upstream(answer)
    try:
        _run(url, lambda be: be.sample("x", Sampling(max_tokens=1, seed=7, ignore_eos=True), 1))
        _run(url, lambda be: be.sample("x", Sampling(max_tokens=1, seed=7), 1))
    finally:
        close()
    completions = [b for b in bodies if "prompt" in b]
    assert completions[0]["ignore_eos"] is True and "ignore_eos" not in completions[-1]


def test_bad_urls_model_lists_and_templates_are_named():
    with pytest.raises(BackendError, match="is not valid") as e:
        OpenAICompatBackend("http://127.0.0.1:99999/v1")
    assert "http://127.0.0.1:8080/v1" in e.value.hint
    with pytest.raises(BackendError, match="is not valid"):
        OpenAICompatBackend("ftp://example.org")
    for data in ({"data": [{"name": "m"}]}, {"data": {"id": "m"}}, {"data": "m"}):
        url, close = _serve(_http(200, data))
        try:
            with pytest.raises(BackendError, match="not the OpenAI model list"):
                _run(url, lambda be: be.model_id(), model=None)
        finally:
            close()
    url, close = _serve(_http(200, {"chat_template": "{% for m in messages %}{{ m.content "}))
    try:
        with pytest.raises(BackendError, match="chat template does not render") as e:
            _run(url, lambda be: be.fetch_chat_template())
        assert "--chat-template" in e.value.hint
    finally:
        close()


def test_a_failing_chain_stops_its_siblings_cleanly_in_a_collection(tmp_path, recwarn, caplog):
    """Two chains stream at once; one upstream stream breaks. The collection stops with that
    error (not an IndexError from a client closed under the other chain), the other chain is
    cancelled, and no half chain reaches the working state."""
    import socket

    from stopwise.collect import CollectConfig, collect, read_chunks

    streams = []
    lock = threading.Lock()

    def handler(conn, stop):
        path, _ = read_request(conn)
        if path.endswith(b"/models"):
            conn.sendall(_http(200, {"data": [{"id": "m"}]}))
        elif path.endswith(b"/props"):
            conn.sendall(_http(404, {"error": "no"}))
        else:
            with lock:  # the two streams' handlers run at once: number them atomically
                streams.append(1)
                first = len(streams) == 1
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
            event = b"data: " + json.dumps({"choices": [{"text": "1", "logprobs": _lp(["1"])}]}).encode() + b"\n\n"
            if first:  # the first chain's stream breaks after one token
                time.sleep(0.3)
                conn.sendall(event)
                conn.shutdown(socket.SHUT_RDWR)
            else:  # the second is slow and would finish much later
                _send_every(conn, event, 0.25, stop, times=40)
        conn.close()

    url, close = fake_upstream(handler)
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"question": "1+0?", "answer": 1}) + "\n")
    cfg = CollectConfig(dataset=f"jsonl:{q}", model=url, questions=1, chains=2, max_tokens=40, probe_every=0,
                        cue_probes=False, batch_chains=2)
    t = time.monotonic()
    try:
        with pytest.raises(BackendError, match="ended the stream without \\[DONE\\]|connection to .* broke"):
            collect(cfg, tmp_path / "o")
    finally:
        close()
    assert time.monotonic() - t < 8, "the slow sibling was not cancelled"
    assert read_chunks(tmp_path / "o.collect") == []
    assert not [w for w in recwarn.list if "never retrieved" in str(w.message) or "never awaited" in str(w.message)]
    # nothing is left to fail during asyncio.run()'s shutdown (an IndexError from closed client shards was)
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelname == "ERROR"], caplog.text


def test_a_probe_retry_waits_for_retry_after():
    from stopwise.backends.openai_wire import retry_after as _retry_after

    assert _retry_after("2") == 2.0 and _retry_after(None) is None and _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait
    times = []

    def limited(conn, stop):
        read_request(conn)
        times.append(time.monotonic())
        conn.sendall(_http(429, {"error": {"message": "slow down"}}, extra=b"retry-after: 1\r\n"))
        conn.close()

    url, close = fake_upstream(limited)
    try:
        with pytest.raises(BackendError, match="HTTP 429") as e:
            _run(url, lambda be: be.continue_prefix("q", [], "A:", 4), retries=1)
        assert e.value.retry_after == 1.0
    finally:
        close()
    assert len(times) == 2 and times[1] - times[0] >= 0.95


def test_a_busy_client_pool_is_named_as_such():
    def stall(conn, stop):
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        stop.wait(20)
        conn.close()

    url, close = fake_upstream(stall)

    async def main(be):
        agen = be.stream("x", Sampling(max_tokens=4))
        first = asyncio.create_task(agen.__anext__())  # holds the only connection
        await asyncio.sleep(0.3)
        try:
            await be.continue_prefix("q", [], "A:", 4)
        finally:
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            await agen.aclose()

    try:
        with pytest.raises(BackendError, match="no free connection") as e:
            _run(url, main, max_connections=1, connect_timeout=0.5, read_timeout=10.0)
        assert "lower --batch" in e.value.hint
    finally:
        close()


def test_chains_of_one_n_request_do_not_claim_its_seed():
    """A server that honours ``n`` answers 3 chains from one seed: none of them records it as its own
    (a server that ignores ``n`` is tested against llama_cpp.server in test_openai_compat)."""
    choice = {"text": "ab", "finish_reason": "stop", "logprobs": _lp(["a", "b"])}
    url, close = _serve(_http(200, {"choices": [dict(choice, index=i) for i in range(3)]}))
    try:
        res = _run(url, lambda be: be.sample("x", Sampling(max_tokens=2, seed=7), 3))
        assert [r.text for r in res] == ["ab"] * 3 and [r.seed for r in res] == [None] * 3
        res = _run(url, lambda be: be.sample("x", Sampling(max_tokens=2, seed=7), 1))
        assert [r.seed for r in res] == [7]
    finally:
        close()


def test_chains_that_start_together_share_one_model_list_request():
    seen = []
    url, close = _serve(_http(200, {"object": "list", "data": [{"id": "served"}]}), seen)

    async def many(be):
        return await asyncio.gather(*(be.model_id() for _ in range(8)))

    try:
        assert _run(url, many, model=None) == ["served"] * 8
        assert len(seen) == 1
    finally:
        close()
    # a failed request is not remembered: the next call asks again
    seen.clear()
    url, close = _serve(_http(503, {"error": {"message": "loading"}}), seen)
    try:
        async def twice(be):
            for _ in range(2):
                with pytest.raises(BackendError, match="HTTP 503"):
                    await asyncio.gather(*(be.model_id() for _ in range(4)))
        _run(url, twice, model=None)
        assert len(seen) == 2
    finally:
        close()


def test_a_model_list_request_whose_callers_left_ends_with_aclose():
    """Every chain waiting for a slow GET /v1/models is cancelled (Ctrl-C): aclose() stops the shared request."""
    stop = threading.Event()

    def handler(conn, _stop):
        read_request(conn)
        stop.wait(10)  # never answers in time
        conn.close()

    url, close = fake_upstream(handler)

    async def main():
        be = OpenAICompatBackend(url, retries=0)
        waiters = [asyncio.create_task(be.model_id()) for _ in range(3)]
        await asyncio.sleep(0.3)
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        task = be._model_fetch
        assert not task.done()  # shielded: the callers left, the request did not
        await be.aclose()
        assert task.cancelled()  # stopped by aclose (not later, by asyncio.run's own cleanup)

    try:
        asyncio.run(main())
    finally:
        stop.set()
        close()
