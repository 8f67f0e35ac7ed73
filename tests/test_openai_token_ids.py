"""Token ids from HTTP upstreams, against FAKE upstreams (raw loopback sockets over real HTTP, named as
fakes) that answer the way the real servers do (read in their sources):

* fake vLLM: ``return_tokens_as_token_ids`` makes every logprob token ``"token_id:N"`` (top-logprob keys
  too) and leaves the text only in the chunk's ``text``; ``return_token_ids`` adds the choice's ``token_ids``;
* fake older vLLM: placeholders only (it ignores ``return_token_ids``);
* fake SGLang: ``return_token_ids`` only (logprob tokens stay text);
* a fake that ignores both fields (llama.cpp's server), one that refuses them with HTTP 400 (a strict
  OpenAI-compatible API), and one whose stream mixes chunks with and without ids.

Each upstream records what it received, so the tests check what was sent: the fields, and a probe's
token-id prompt (the prompt's ids from a fake ``/tokenize`` + the chain's ids + the forcing string's ids).
"""

import asyncio
import json

import pytest
from net_helpers import fake_upstream, read_request

from stopwise.backends.base import Sampling
from stopwise.backends.openai_compat import OpenAICompatBackend
from stopwise.backends.openai_wire import (
    steps_from_chat_logprobs,
    steps_from_completion_logprobs,
)
from stopwise.errors import BackendError

PROMPT = "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
FORCING = "\nAnswer: {"
PROMPT_IDS = [1, 2, 3]
FORCING_IDS = [90, 91]
# the chain, chunk by chunk: (chunk text, [(id, token text, logprob)]); the second chunk carries two tokens
CHUNKS = [("Hel", [(11, "Hel", -0.1)]), ("lo world", [(12, "lo", -0.2), (13, " world", -0.3)]), ("!", [(14, "!", -0.4)])]
FIELDS = ("return_tokens_as_token_ids", "return_token_ids")


def _response(status, body, ctype="application/json"):
    body = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, ctype.encode(), len(body), body))


class FakeUpstream:
    """A fake OpenAI-compatible upstream; ``mode`` is ``vllm``, ``old_vllm``, ``sglang``, ``ignore``, ``refuse`` or ``mixed``."""

    def __init__(self, mode, owner="vllm"):
        self.mode, self.owner = mode, owner
        self.requests = []  # (path, JSON body)
        self.url, self.close = fake_upstream(self._handle)

    def bodies(self, path):
        return [b for p, b in self.requests if p == path]

    def _handle(self, conn, stop):
        try:
            path, raw = read_request(conn)
            path = path.decode()
            body = json.loads(raw) if raw else {}
            self.requests.append((path, body))
            conn.sendall(self._answer(path, body))
        finally:
            conn.close()

    def _answer(self, path, body):
        ids_mode = self.mode in ("vllm", "old_vllm", "sglang", "mixed")
        if path == "/v1/models":
            return _response(200, {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": self.owner}]})
        if path == "/tokenize":
            if not ids_mode:
                return _response(404, {"detail": "Not Found"})
            return _response(200, {"tokens": PROMPT_IDS if body.get("prompt") == PROMPT else FORCING_IDS})
        if path != "/v1/completions":
            return _response(404, {"detail": "Not Found"})
        if self.mode == "refuse" and any(k in body for k in FIELDS):
            return _response(400, {"error": {"message": "Unrecognized request argument supplied: return_tokens_as_token_ids"}})
        placeholders = body.get("return_tokens_as_token_ids") is True and self.mode in ("vllm", "old_vllm", "mixed")
        with_ids = body.get("return_token_ids") is True and ids_mode and self.mode != "old_vllm"
        if not body.get("stream"):  # a probe or a non-streamed sample: "42}" in two tokens
            ch = {"index": 0, "text": "42}", "finish_reason": "stop",
                  "logprobs": {"tokens": ["42", "}"], "token_logprobs": [-0.5, -0.25], "top_logprobs": [{"42": -0.5}, {"}": -0.25}]}}
            if with_ids:
                ch["token_ids"] = [42, 125]
            return _response(200, {"choices": [ch], "usage": {"prompt_tokens": 9, "completion_tokens": 2}})
        out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
        for i, (text, toks) in enumerate(CHUNKS):
            ph = placeholders and not (self.mode == "mixed" and i == len(CHUNKS) - 1)  # mixed: the last chunk has no ids
            name = (lambda tid, t: f"token_id:{tid}") if ph else (lambda tid, t: t)
            ch = {"index": 0, "text": text, "finish_reason": None, "logprobs": {
                "tokens": [name(tid, t) for tid, t, _ in toks],
                "token_logprobs": [lp for _, _, lp in toks],
                "top_logprobs": [{name(tid, t): lp, name(99, "x"): -2.0} for tid, t, lp in toks]}}
            if with_ids and not (self.mode == "mixed" and i == len(CHUNKS) - 1):
                ch["token_ids"] = [tid for tid, _, _ in toks]
            out += b"data: " + json.dumps({"choices": [ch]}).encode() + b"\n\n"
        return out + b"data: [DONE]\n\n"


@pytest.fixture
def fake():
    made = []

    def make(mode, owner="vllm"):
        up = FakeUpstream(mode, owner)
        made.append(up)
        return up

    yield make
    for up in made:
        up.close()


def _run(url, fn, **kw):
    async def main():
        be = OpenAICompatBackend(url, **{"retries": 0, **kw})
        try:
            return be, await fn(be)
        finally:
            await be.aclose()

    return asyncio.run(main())


async def _chain(be):
    return [s async for s in be.stream(PROMPT, Sampling(temperature=0.0, max_tokens=8))]


def test_vllm_placeholders_give_ids_with_the_chunks_text(fake):
    up = fake("vllm")
    be, steps = _run(up.url, _chain, model="m", token_ids=True)
    (sent,) = up.bodies("/v1/completions")
    assert sent["return_tokens_as_token_ids"] is True and sent["return_token_ids"] is True
    # the text is the chunk's: a chunk of two tokens gives its text to the first and "" to the second
    assert [s.text for s in steps] == ["Hel", "lo world", "", "!"]
    assert [s.token_id for s in steps] == [11, 12, 13, 14]
    assert [s.logprob for s in steps] == [-0.1, -0.2, -0.3, -0.4]
    assert steps[1].top_tokens == ["token_id:12", "token_id:99"] and steps[1].top_logprobs == [-0.2, -2.0]
    assert be.token_ids_supported is True and be.capabilities.token_ids is True
    assert be.capabilities.prefix_continuation and type(be).capabilities.token_ids is False  # per instance


def test_sglang_token_ids_keep_the_token_texts(fake):
    up = fake("sglang", owner="sglang")
    be, steps = _run(up.url, _chain)  # no model given: /v1/models names SGLang, so ids are asked for
    assert up.bodies("/v1/completions")[0]["return_token_ids"] is True
    assert [s.text for s in steps] == ["Hel", "lo", " world", "!"]
    assert [s.token_id for s in steps] == [11, 12, 13, 14]
    assert steps[0].top_tokens == ["Hel", "x"]
    assert be.capabilities.token_ids is True


def test_a_probe_sends_prompt_chain_and_forcing_ids(fake):
    up = fake("vllm")

    async def fn(be):
        steps = await _chain(be)
        return await be.continue_prefix(PROMPT, steps[:3], FORCING, 8)

    be, (text, lp, prefill, dec) = _run(up.url, fn, model="m", token_ids=True)
    (probe,) = [b for b in up.bodies("/v1/completions") if not b["stream"]]
    assert probe["prompt"] == PROMPT_IDS + [11, 12, 13] + FORCING_IDS
    assert probe["return_tokens_as_token_ids"] is False  # the probe reads token texts, not placeholders
    assert "return_token_ids" not in probe
    tok = up.bodies("/tokenize")
    assert [t["prompt"] for t in tok] == [PROMPT, FORCING]
    assert tok[1]["add_special_tokens"] is False and tok[1]["add_special"] is False  # no BOS before the forcing string
    assert (text, lp, prefill, dec) == ("42}", -0.75, 9, 2)
    assert be.token_prompts is True


def test_an_upstream_that_refuses_the_fields_still_generates_and_is_not_asked_again(fake):
    up = fake("refuse")

    async def fn(be):
        first = await _chain(be)
        second = await _chain(be)
        sampled = await be.sample(PROMPT, Sampling(temperature=0.7, max_tokens=8), 1)
        probe = await be.continue_prefix(PROMPT, first[:2], FORCING, 8)
        return first, second, sampled, probe

    be, (first, second, sampled, probe) = _run(up.url, fn, model="m", token_ids=True)
    sent = up.bodies("/v1/completions")
    # the first stream: refused with 400, then the same request without the fields; never the fields again
    assert [any(k in b for k in FIELDS) for b in sent] == [True, False, False, False, False]
    assert {k: v for k, v in sent[0].items() if k not in FIELDS} == sent[1]
    assert "".join(s.text for s in first) == "Hello world!" and [s.text for s in first] == [s.text for s in second]
    assert all(s.token_id is None for s in first + second + sampled[0].steps)
    assert be.token_ids_supported is False and be.capabilities.token_ids is False
    assert sent[-1]["prompt"] == PROMPT + "Hello" + FORCING and probe[0] == "42}"  # the probe sends text


def test_a_refused_non_streamed_generation_is_sent_once_more_without_the_fields(fake):
    up = fake("refuse")
    be, res = _run(up.url, lambda be: be.sample(PROMPT, Sampling(temperature=0.7, max_tokens=8), 1), model="m", token_ids=True)
    sent = up.bodies("/v1/completions")
    assert sent[0]["return_token_ids"] is True and "return_tokens_as_token_ids" not in sent[0]  # no placeholders unstreamed
    assert not any(k in sent[1] for k in FIELDS) and len(sent) == 2
    assert res[0].text == "42}" and be.token_ids_supported is False


def test_an_unstreamed_answer_without_ids_does_not_stop_the_streams_asking(fake):
    up = fake("old_vllm")

    async def fn(be):
        sampled = await be.sample(PROMPT, Sampling(temperature=0.7, max_tokens=8), 1)  # return_token_ids only: ignored
        return sampled, await _chain(be)

    be, (sampled, steps) = _run(up.url, fn, model="m", token_ids=True)
    assert sampled[0].steps[0].token_id is None and [s.text for s in sampled[0].steps] == ["42", "}"]
    assert up.bodies("/v1/completions")[1]["return_tokens_as_token_ids"] is True  # the stream still asks
    assert [s.token_id for s in steps] == [11, 12, 13, 14] and be.token_ids_supported is True


def test_a_400_for_another_reason_is_raised(fake):
    up = fake("refuse")
    up._answer = lambda path, body: _response(400, {"error": {"message": "prompt too long"}})  # fields or not
    with pytest.raises(BackendError, match="HTTP 400: prompt too long"):
        _run(up.url, _chain, model="m", token_ids=True)
    sent = up.bodies("/v1/completions")
    assert [any(k in b for k in FIELDS) for b in sent] == [True, False]  # once more without the fields, then the error


def test_an_upstream_that_ignores_the_fields_gives_no_ids_and_text_probes(fake):
    up = fake("ignore", owner="llamacpp")

    async def fn(be):
        first = await _chain(be)
        second = await _chain(be)
        return first, second, await be.continue_prefix(PROMPT, first[:3], FORCING, 8)

    be, (first, second, probe) = _run(up.url, fn, token_ids=True)
    sent = up.bodies("/v1/completions")
    assert sent[0]["return_tokens_as_token_ids"] is True  # asked once ...
    assert not any(k in sent[1] for k in FIELDS)  # ... then not: the upstream ignored them
    assert [s.text for s in first] == ["Hel", "lo", " world", "!"] and all(s.token_id is None for s in first + second)
    assert be.token_ids_supported is False and be.capabilities.token_ids is False
    assert sent[2]["prompt"] == PROMPT + "Hello world" + FORCING and "return_tokens_as_token_ids" not in sent[2]
    assert not up.bodies("/tokenize") and probe[0] == "42}"


def test_a_stream_that_mixes_chunks_with_and_without_ids_keeps_none(fake):
    up = fake("mixed")

    async def fn(be):
        steps, ids_while_streaming = [], []
        async for s in be.stream(PROMPT, Sampling(temperature=0.0, max_tokens=8)):
            steps.append(s)
            ids_while_streaming.append(s.token_id)
        return steps, ids_while_streaming, await be.continue_prefix(PROMPT, steps[:3], FORCING, 8)

    _, (steps, live, probe) = _run(up.url, fn, model="m", token_ids=True)
    assert live == [11, 12, 13, None]  # the first chunks came with ids ...
    assert [s.token_id for s in steps] == [None] * 4  # ... and lost them when the last came without
    assert [s.text for s in steps] == ["Hel", "lo world", "", "!"]
    (probe_body,) = [b for b in up.bodies("/v1/completions") if not b["stream"]]
    assert probe_body["prompt"] == PROMPT + "Hello world" + FORCING and probe[0] == "42}"


@pytest.mark.parametrize("owner, token_ids, asked", [
    ("vllm", None, True), ("sglang", None, True), ("llamacpp", None, False), ("vllm", False, False), ("llamacpp", True, True),
])
def test_the_fields_are_sent_where_asked_or_detected(fake, owner, token_ids, asked):
    up = fake("ignore", owner=owner)
    _run(up.url, _chain, token_ids=token_ids)
    (sent,) = up.bodies("/v1/completions")
    assert all((k in sent) is asked for k in FIELDS)


def test_an_explicit_model_is_not_detected(fake):
    up = fake("vllm")
    be, steps = _run(up.url, _chain, model="m")  # no GET /v1/models, so no detection: nothing asked
    assert not up.bodies("/v1/models") and not any(k in up.bodies("/v1/completions")[0] for k in FIELDS)
    assert all(s.token_id is None for s in steps) and be.token_ids_supported is None


# ---- the wire parsers ----------------------------------------------------------------------------


def test_completion_ids_are_all_or_nothing_within_a_choice():
    lp = {"tokens": ["token_id:5", "b"], "token_logprobs": [-1.0, -2.0], "top_logprobs": [None, None]}
    steps = steps_from_completion_logprobs(lp, "ab")
    assert [(s.text, s.token_id) for s in steps] == [("ab", None), ("", None)]  # a placeholder's text is the chunk's
    lp = {"tokens": ["a", "b"], "token_logprobs": [-1.0, -2.0], "top_logprobs": [None, None]}
    assert [s.token_id for s in steps_from_completion_logprobs(lp, "ab", token_ids=[7, 8])] == [7, 8]
    assert [s.token_id for s in steps_from_completion_logprobs(lp, "ab", token_ids=[7])] == [None, None]  # not one a token
    assert [s.token_id for s in steps_from_completion_logprobs(lp, "ab", token_ids=[7, True])] == [None, None]
    assert steps_from_completion_logprobs(None, "ab", token_ids=[7])[0].token_id == 7  # one token without logprobs
    bad = {"tokens": ["token_id:x", "token_id:-1", "token_id:²"], "token_logprobs": [0.0] * 3, "top_logprobs": [None] * 3}
    assert [s.token_id for s in steps_from_completion_logprobs(bad, "abc")] == [None] * 3


def test_chat_placeholders_ids_and_llamacpp_entry_ids():
    lp = {"content": [{"token": "token_id:7", "logprob": -0.5, "bytes": list(b"token_id:7"),
                       "top_logprobs": [{"token": "token_id:7", "logprob": -0.5}, {"token": "token_id:8", "logprob": -1.0}]},
                      {"token": "token_id:9", "logprob": -0.25, "top_logprobs": []}]}
    steps = steps_from_chat_logprobs(lp, "Hi!")
    assert [(s.text, s.token_id, s.logprob) for s in steps] == [("Hi!", 7, -0.5), ("", 9, -0.25)]
    assert steps[0].top_tokens == ["token_id:7", "token_id:8"]
    plain = {"content": [{"token": "Hi", "logprob": -0.5, "top_logprobs": []}, {"token": "!", "logprob": -0.1, "top_logprobs": []}]}
    assert [s.token_id for s in steps_from_chat_logprobs(plain, "Hi!")] == [None, None]
    assert [s.token_id for s in steps_from_chat_logprobs(plain, "Hi!", token_ids=[3, 4])] == [3, 4]
    own = {"content": [{"id": 3, "token": "Hi", "logprob": -0.5, "top_logprobs": []}, {"id": 4, "token": "!", "logprob": -0.1}]}
    assert [(s.text, s.token_id) for s in steps_from_chat_logprobs(own, "Hi!")] == [("Hi", 3), ("!", 4)]
