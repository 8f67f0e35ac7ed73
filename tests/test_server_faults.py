"""Faults between stopwise serve and its upstream, over real loopback HTTP.

The upstream is instrumented: another stopwise server in pass-through mode whose
backend streams a logged trace set at a fixed rate and reports its live
generations in /metrics, so the tests can see that abandoned chains stop there.
"""

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
from net_helpers import fake_upstream, free_port, read_request, start_app, wait_http_ok

from stopwise.data import bundled_path


def live_generations(url: str) -> int:
    m = re.search(r"stopwise_backend_live_generations (\d+)", httpx.get(url + "/metrics").text)
    return int(m.group(1))


@pytest.fixture(scope="module")
def upstream():
    from stopwise.server.settings import ServeSettings

    spec = f"trace:{bundled_path('qwq_gsm8k')}?rate=200"
    url, server, t = start_app(ServeSettings(backend=spec, max_tokens_limit=100000))
    yield url
    server.should_exit = True
    t.join(5)


@pytest.fixture(scope="module")
def front(upstream):
    from stopwise.server.settings import ServeSettings

    url, server, t = start_app(ServeSettings(backend=upstream, upstream_timeout_s=5, max_tokens_limit=100000))
    yield url
    server.should_exit = True
    t.join(5)


def test_client_disconnect_stops_the_upstream_generation(front, upstream):
    from openai import OpenAI

    client = OpenAI(base_url=front + "/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "long"}], max_tokens=5000, stream=True, seed=3)
    n = 0
    for _ in stream:
        n += 1
        if n == 5:
            break
    assert live_generations(upstream) == 1
    stream.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and live_generations(upstream) != 0:
        time.sleep(0.05)
    assert live_generations(upstream) == 0, "the abandoned generation kept running upstream"


def test_upstream_killed_mid_stream_ends_the_client_stream_cleanly(tmp_path):
    """A separate upstream process killed with SIGKILL mid-stream: the client gets an error
    chunk and the end of the stream within a bounded time, never a hang."""
    from openai import OpenAI

    from stopwise.server.settings import ServeSettings

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stopwise.cli.main", "serve", "--backend", f"trace:{bundled_path('qwq_gsm8k')}?rate=100", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        up = f"http://127.0.0.1:{port}"
        assert wait_http_ok(up + "/health", 60), "the upstream did not start"
        url, server, t = start_app(ServeSettings(backend=up, upstream_timeout_s=3))
        client = OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)
        t0 = time.monotonic()
        got, errors = [], []
        stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=300, stream=True)
        try:
            for chunk in stream:
                got.append(chunk)
                if len(got) == 5:
                    os.kill(proc.pid, signal.SIGKILL)
        except Exception as exc:  # the client reports the error chunk as an APIError
            errors.append(exc)
        assert time.monotonic() - t0 < 15
        assert 5 <= len(got) < 300
        assert errors, "the client should see the upstream failure"
        msg = str(errors[0]).lower()
        assert "upstream" in msg or "broke" in msg
        server.should_exit = True
        t.join(5)
    finally:
        proc.kill()






@pytest.mark.parametrize("kind", ["stall", "garbage", "refused"])
def test_bad_upstreams_give_a_clean_error_in_bounded_time(kind):
    import openai
    from openai import OpenAI

    from stopwise.server.settings import ServeSettings

    def stall(conn, stop):
        read_request(conn)
        stop.wait(30)

    def garbage(conn, stop):
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: <html>oops\n\n")
        conn.close()

    if kind == "refused":
        up, close = f"http://127.0.0.1:{free_port()}", lambda: None
    else:
        up, close = fake_upstream(stall if kind == "stall" else garbage)
    try:
        url, server, t = start_app(ServeSettings(backend=up, upstream_timeout_s=1.5))

        client = OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)
        t0 = time.monotonic()
        with pytest.raises(openai.APIStatusError) as ei:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=5)
        assert ei.value.status_code == 502
        assert time.monotonic() - t0 < 10
        msg = str(ei.value)
        assert {"stall": "timed out", "garbage": "malformed", "refused": "cannot connect"}[kind] in msg
        server.should_exit = True
        t.join(5)
    finally:
        close()
