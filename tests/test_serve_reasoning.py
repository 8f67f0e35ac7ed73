"""Reasoning models as they are served, over real loopback HTTP with the official openai SDK.

The upstream is ``stopwise serve --backend trace:qwq_gsm8k``: real QwQ-32B chains
replayed token by token through ``/v1/chat/completions``. In front of it,
``stopwise serve --upstream-api chat`` with and without a certified policy.
Fake upstreams (raw sockets, named as such) misbehave on purpose.
"""

import json
import logging
import subprocess
import sys
import time

import pytest
from net_helpers import fake_upstream, read_request, start_app

from stopwise.data import bundled_path

pytest.importorskip("fastapi")
pytest.importorskip("openai")
pytest.importorskip("tokenizers")



@pytest.fixture(scope="module")
def qwq():
    from stopwise.traces.io import read_trace_set

    return read_trace_set(bundled_path("qwq_gsm8k"))


@pytest.fixture(scope="module")
def upstream():
    from stopwise.server.settings import ServeSettings

    url, server, t = start_app(ServeSettings(backend=f"trace:{bundled_path('qwq_gsm8k')}?rate=0", max_tokens_limit=20000, max_concurrent=16))
    yield url
    server.should_exit = True
    t.join(5)


@pytest.fixture(scope="module")
def text_policy(tmp_path_factory):
    out = tmp_path_factory.mktemp("pol") / "fc.json"
    subprocess.run([sys.executable, "-m", "stopwise.cli.main", "calibrate", "--traces", str(bundled_path("qwq_gsm8k")),
                    "--policy", "first_candidate", "--out", str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def front(upstream, text_policy):
    from stopwise.server.settings import ServeSettings

    url, server, t = start_app(ServeSettings(backend=upstream, upstream_api="chat", policies=[str(text_policy)], max_tokens_limit=20000))
    yield url
    server.should_exit = True
    t.join(5)


def client(url):
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)


def question(qwq, i):
    row = qwq.chains.slice(i, 1).to_pylist()[0]
    return qwq.questions.column("question")[i].as_py(), row


def read_stream(stream):
    """What a streaming client received: the thinking and the answer (joined), the chunks that carried
    text, whether any thinking came after the answer had begun, and the last stopwise object and usage."""
    from types import SimpleNamespace

    got = SimpleNamespace(reasoning=[], content=[], chunks=0, thinking_after_answer=False, sw=None, usage=None)
    for chunk in stream:
        got.sw = (chunk.model_extra or {}).get("stopwise") or got.sw
        got.usage = chunk.usage or got.usage
        for ch in chunk.choices:
            r = (ch.delta.model_extra or {}).get("reasoning_content")
            if r is not None or ch.delta.content is not None:
                got.chunks += 1
            if r:
                got.thinking_after_answer |= bool(got.content)
                got.reasoning.append(r)
            if ch.delta.content:
                got.content.append(ch.delta.content)
    got.reasoning_chunks = len(got.reasoning)
    got.reasoning, got.content = "".join(got.reasoning), "".join(got.content)
    return got


def test_reasoning_content_apart_from_the_answer_not_streamed(upstream, qwq):
    q, row = question(qwq, 0)
    r = client(upstream).chat.completions.create(model="m", messages=[{"role": "user", "content": q}], max_tokens=20000)
    msg = r.choices[0].message
    reasoning = msg.model_extra["reasoning_content"]
    # the model's own text, split at its closing marker: nothing lost, nothing added
    assert reasoning + "</think>" + msg.content == row["text"]
    assert "</think>" not in msg.content and "\\boxed{540}" in reasoning
    assert r.usage.completion_tokens == row["n_tokens"]
    details = r.usage.completion_tokens_details
    assert 0 < details.reasoning_tokens < r.usage.completion_tokens


def test_reasoning_content_streamed_one_chunk_a_token(upstream, qwq):
    q, row = question(qwq, 1)
    stream = client(upstream).chat.completions.create(model="m", messages=[{"role": "user", "content": q}], max_tokens=20000, stream=True)
    got = read_stream(stream)
    assert not got.thinking_after_answer
    assert got.reasoning + "</think>" + got.content == row["text"]
    assert got.chunks == row["n_tokens"] == got.usage.completion_tokens  # a client counting chunks counts the set's tokens
    assert got.usage.completion_tokens_details.reasoning_tokens >= got.reasoning_chunks


def test_inline_thinking_for_clients_that_parse_it(qwq):
    from stopwise.server.settings import ServeSettings

    url, server, t = start_app(ServeSettings(backend=f"trace:{bundled_path('qwq_gsm8k')}?rate=0", max_tokens_limit=20000, reasoning_format="inline"))
    try:
        q, row = question(qwq, 2)
        r = client(url).chat.completions.create(model="m", messages=[{"role": "user", "content": q}], max_tokens=20000)
        msg = r.choices[0].message
        assert "reasoning_content" not in (msg.model_extra or {})
        # QwQ's template opened the thinking in the prompt: the inline client gets the opening marker too
        assert msg.content == "<think>" + row["text"]
    finally:
        server.should_exit = True
        t.join(5)


def test_policy_over_a_chat_upstream_stops_on_a_stated_answer(front, qwq):
    q, row = question(qwq, 3)
    stream = client(front).chat.completions.create(model="m", messages=[{"role": "user", "content": q}], max_tokens=20000, stream=True, seed=0)
    got = read_stream(stream)
    sw, usage = got.sw, got.usage
    assert sw["policy"] == "first_candidate" and sw["certified"] is True
    assert sw["stopped_early"] == 1 and sw["tokens"] < row["n_tokens"]
    assert sw["probe_tokens"] == 0  # the answer was read from the stream: no forcing request
    # the thinking the client got is the chain's own prefix (and the forcing's line break before its
    # closing marker), and the answer is the one it stated
    assert got.reasoning.endswith("\n") and row["text"].startswith(got.reasoning[:-1])
    assert got.content.strip().endswith("\\boxed{" + sw["answer"] + "}")
    acc = usage.model_extra["stopwise"]
    assert acc["generated_tokens"] >= sw["tokens"] and acc["probe_tokens"] == 0
    assert acc["saved_tokens_estimate"] == max(0, acc["full_tokens_estimate"] - acc["generated_tokens"])


def test_policy_not_streamed_has_accounting_headers(front, qwq):
    import httpx

    q, _ = question(qwq, 4)
    r = httpx.post(front + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": q}], "max_tokens": 20000}, timeout=120)
    assert r.status_code == 200
    body = r.json()
    msg = body["choices"][0]["message"]
    assert msg["reasoning_content"] and "\\boxed{" in msg["content"]
    assert int(r.headers["x-stopwise-generated-tokens"]) == body["usage"]["stopwise"]["generated_tokens"]
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


def test_chat_only_upstream_refuses_a_policy_that_forces_answers(upstream, tmp_path):
    from stopwise.errors import ConfigError
    from stopwise.server.app import create_app
    from stopwise.server.settings import ServeSettings

    pol = tmp_path / "forced.json"
    subprocess.run([sys.executable, "-m", "stopwise.cli.main", "calibrate", "--traces", str(bundled_path("gsm8k_qwen05")),
                    "--policy", "token_budget", "--epsilon", "0.2", "--select", "aggressive", "--out", str(pol)], check=True, capture_output=True)
    assert json.loads(pol.read_text())["conditions"]["forcing_string"]  # calibrated on forced probes
    with pytest.raises(ConfigError) as e:
        create_app(ServeSettings(backend=upstream, upstream_api="chat", policies=[str(pol)]))
    msg = str(e.value) + " " + (e.value.hint or "")
    assert "cannot continue a prefix" in msg and "first_candidate" in msg and str(pol) in msg
    # the same policy over /v1/completions is accepted (probes continue the prefix there)
    create_app(ServeSettings(backend=upstream, upstream_api="completions", policies=[str(pol)]))


def sse_chat(deltas, *, cut=False):
    """A fake chat upstream's body: one SSE event per delta, then [DONE] (or nothing: the stream is cut)."""
    out = b""
    for d in deltas:
        ev = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "DeepSeek-R1-Distill-Qwen-7B",
              "choices": [{"index": 0, "delta": d, "finish_reason": None}]}
        out += b"data: " + json.dumps(ev).encode() + b"\n\n"
    return out if cut else out + b"data: [DONE]\n\n"


def fake_chat_upstream(body: bytes, *, cut: bool):
    """A FAKE chat-only upstream: /v1/models, then the given stream on /v1/chat/completions."""

    def handler(conn, stop):
        try:
            while True:
                path, _ = read_request(conn)
                if path.startswith(b"/v1/models"):
                    data = json.dumps({"object": "list", "data": [{"id": "DeepSeek-R1-Distill-Qwen-7B", "object": "model"}]}).encode()
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
                    continue
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                conn.sendall(hex(len(body))[2:].encode() + b"\r\n" + body + b"\r\n")
                if cut:
                    conn.close()  # mid-thinking: no [DONE], no end of the chunked body
                    return
                conn.sendall(b"0\r\n\r\n")
        except OSError:
            return

    return fake_upstream(handler)


def test_upstream_cut_in_the_middle_of_thinking():
    from openai import APIError

    from stopwise.server.settings import ServeSettings

    up, close = fake_chat_upstream(sse_chat([{"role": "assistant", "content": ""}] + [{"reasoning_content": w} for w in ["Let", " me", " think"]], cut=True), cut=True)
    url, server, t = start_app(ServeSettings(backend=up, upstream_api="chat", upstream_timeout_s=5))
    try:
        got = []
        t0 = time.monotonic()
        with pytest.raises(APIError) as e:  # the SDK raises on the error event; the thinking so far arrived first
            for chunk in client(url).chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}], stream=True):
                for ch in chunk.choices:
                    got.append((ch.delta.model_extra or {}).get("reasoning_content"))
        assert time.monotonic() - t0 < 10
        assert "".join(g for g in got if g) == "Let me think"
        assert "broke" in str(e.value) or "without [DONE]" in str(e.value) or "closed" in str(e.value)
    finally:
        server.should_exit = True
        t.join(5)
        close()


def test_no_reasoning_field_is_read_inline_with_one_warning(caplog):
    from stopwise.server.settings import ServeSettings

    body = sse_chat([{"role": "assistant", "content": ""}, {"content": "Two"}, {"content": " plus two is 4."}, {"content": "</think>"},
                     {"content": "\n\nThe answer is $\\boxed{4}$."}])
    up, close = fake_chat_upstream(body, cut=False)
    url, server, t = start_app(ServeSettings(backend=up, upstream_api="chat"))
    try:
        with caplog.at_level(logging.WARNING, logger="stopwise.backends"):
            for _ in range(2):
                r = client(url).chat.completions.create(model="m", messages=[{"role": "user", "content": "2+2?"}])
                msg = r.choices[0].message
                assert msg.model_extra["reasoning_content"] == "Two plus two is 4."
                assert msg.content == "\n\nThe answer is $\\boxed{4}$."
        warned = [rec for rec in caplog.records if "no reasoning field" in rec.getMessage()]
        assert len(warned) == 1
    finally:
        server.should_exit = True
        t.join(5)
        close()


def test_bad_profile_fails_at_start_up_naming_the_key(tmp_path):
    from stopwise.backends.profiles import ProfileError
    from stopwise.server.app import create_app
    from stopwise.server.settings import ServeSettings

    bad = tmp_path / "p.toml"
    bad.write_text('[mine]\nthink_close = "</think>"\nthink_clse = "x"\n[mine.forcing]\nmath = "</think> Final: "\n')
    with pytest.raises(ProfileError) as e:
        create_app(ServeSettings(backend=f"trace:{bundled_path('qwq_gsm8k')}", profile=str(bad)))
    assert "think_clse" in str(e.value) and str(bad) in str(e.value)
    bad.write_text('[mine]\nthink_close = "</think>"\n[mine.forcing]\nmath = "</think> Final: "\n')
    with pytest.raises(ProfileError) as e:
        create_app(ServeSettings(backend=f"trace:{bundled_path('qwq_gsm8k')}", profile=str(bad)))
    assert "math" in str(e.value) and "{answer}" in str(e.value)


def test_collect_from_a_chat_only_upstream_gives_text_probes_like_the_bundled_sets(upstream, qwq, tmp_path):
    """`stopwise collect --upstream-api chat`: the real chains the upstream serves come back as a text
    trace set whose token positions and text-derived probes are the bundled set's own."""
    from stopwise.collect import CollectConfig, collect
    from stopwise.datasets import load_dataset
    from stopwise.traces.io import read_trace_set

    logged = {q: i for i, q in enumerate(qwq.questions.column("question").to_pylist())}
    items = load_dataset("gsm8k", size=1319, seed=0).items
    offset = next(i for i, it in enumerate(items) if it.question in logged and items[i + 1].question in logged)
    cfg = CollectConfig(dataset="gsm8k", model=upstream, api="chat", questions=2, offset=offset, chains=1, max_tokens=20000, batch_chains=2)
    path = collect(cfg, tmp_path / "chat_set")
    ts = read_trace_set(path)
    assert ts.provenance.probe_schedule.startswith("text cues") and ts.provenance.forcing_string is None
    for got in ts.chains.to_pylist():
        q = ts.questions.column("question")[[r["question_id"] for r in ts.questions.to_pylist()].index(got["question_id"])].as_py()
        want = qwq.chains.slice(logged[q], 1).to_pylist()[0]
        assert got["text"] == want["text"] and got["n_tokens"] == want["n_tokens"]
        assert got["probe_position"] == want["probe_position"] and got["probe_cue"] == want["probe_cue"]
        assert got["probe_answer"] == want["probe_answer"] and set(got["probe_cost"]) <= {0}


def test_chat_continuation_forces_an_answer_where_the_upstream_allows_it():
    """With continuation (vLLM/SGLang continue_final_message), a chat upstream takes probes: the
    FAKE upstream receives the prefix and forcing as a final assistant message to continue."""
    import asyncio

    from stopwise.backends.base import TokenStep
    from stopwise.backends.openai_chat import OpenAIChatBackend
    from stopwise.errors import BackendError

    seen = []

    def handler(conn, stop):
        try:
            while True:
                path, body = read_request(conn)
                if path.startswith(b"/v1/models"):
                    data = json.dumps({"object": "list", "data": [{"id": "QwQ-32B", "object": "model"}]}).encode()
                else:
                    seen.append(json.loads(body))
                    data = json.dumps({"id": "x", "object": "chat.completion", "model": "QwQ-32B",
                                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "42}"}, "finish_reason": "stop"}],
                                       "usage": {"prompt_tokens": 30, "completion_tokens": 2}}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
        except OSError:
            return

    up, close = fake_upstream(handler)
    try:
        prompt_msgs = [{"role": "user", "content": "6*7?"}]
        prefix = [TokenStep(text="Six times"), TokenStep(text=" seven is 42.")]

        async def go(continuation):
            be = OpenAIChatBackend(up, continuation=continuation)
            try:
                return await be.continue_prefix(be.render_chat(prompt_msgs), prefix, "\n</think>\n\n**Final Answer**\n\\boxed{", 16)
            finally:
                await be.aclose()

        with pytest.raises(BackendError) as e:
            asyncio.run(go(False))
        assert "cannot continue a prefix" in str(e.value) and not seen
        text, _, prefill, _ = asyncio.run(go(True))
        assert text.startswith("42}") and prefill == 30
        body = seen[-1]
        assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
        assert body["messages"][-1] == {"role": "assistant", "content": "Six times seven is 42.\n</think>\n\n**Final Answer**\n\\boxed{"}
    finally:
        close()


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_a_separate_reasoning_field_reaches_the_client_as_reasoning_content(field):
    """vLLM/SGLang/DeepSeek send `reasoning_content`, Ollama/OpenRouter `reasoning` (FAKE upstreams of each
    shape): the client gets `reasoning_content` either way, and the answer apart."""
    from stopwise.server.settings import ServeSettings

    body = sse_chat([{"role": "assistant", "content": ""}, {field: "Two plus"}, {field: " two is 4."},
                     {"content": "\n\nThe answer is $\\boxed{4}$."}])
    up, close = fake_chat_upstream(body, cut=False)
    url, server, t = start_app(ServeSettings(backend=up, upstream_api="chat"))
    try:
        stream = client(url).chat.completions.create(model="m", messages=[{"role": "user", "content": "2+2?"}], stream=True)
        got = read_stream(stream)
        assert got.reasoning == "Two plus two is 4."
        assert got.content == "\n\nThe answer is $\\boxed{4}$."
        assert got.usage.completion_tokens == 3 and got.usage.completion_tokens_details.reasoning_tokens == 2
    finally:
        server.should_exit = True
        t.join(5)
        close()
