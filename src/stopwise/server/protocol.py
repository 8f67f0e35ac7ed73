"""The OpenAI wire format: requests, responses, stream chunks and error bodies.

This is the only module that knows the shape of the OpenAI API; the app converts
these types to backend sampling settings and driver calls at the edge. Unknown
request fields are accepted (and logged by the app), as OpenAI clients send
fields a given server may not use.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class StopwiseControl(BaseModel):
    """The ``stopwise`` extra body field: which calibrated policy (or ``off``) and epsilon."""

    model_config = ConfigDict(extra="forbid")

    policy: str | None = Field(None, description="a policy the server was started with, or 'off'")
    epsilon: float | None = Field(None, gt=0, lt=1, description="one of the epsilons certified in that policy's files")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | None = None


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=1)
    stream: bool = False
    seed: int | None = None
    stop: str | list[str] | None = None
    stopwise: StopwiseControl | None = None

    def max_new(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(..., min_length=1)


class CompletionRequest(_Common):
    prompt: str


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int, *, reasoning_tokens: int | None = None,
          accounting: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``usage`` object; ``reasoning_tokens`` goes in ``completion_tokens_details`` (OpenAI's
    place for it), stopwise's own accounting in the ``stopwise`` extension (see :func:`accounting`)."""
    out: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
    if reasoning_tokens is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": int(reasoning_tokens)}
    if accounting is not None:
        out["stopwise"] = accounting
    return out


def accounting(generated: int, probe_tokens: int = 0, full_estimate: int | None = None) -> dict[str, Any]:
    """stopwise's accounting of one response, in ``usage.stopwise`` and the ``x-stopwise-*`` headers.

    ``generated_tokens``: what the upstream generated for it (every chain, read ahead
    and tokens produced before a cancel arrived included); ``probe_tokens``: probes and
    answer forcing; ``full_tokens_estimate``: what full compute would have generated
    (from the policy's calibration traffic; None without a policy); ``saved_tokens_estimate``:
    their difference, never below 0.
    """
    saved = None if full_estimate is None else max(0, int(full_estimate) - int(generated) - int(probe_tokens))
    return {"generated_tokens": int(generated), "probe_tokens": int(probe_tokens),
            "full_tokens_estimate": full_estimate, "saved_tokens_estimate": saved}


def accounting_headers(acc: dict[str, Any]) -> dict[str, str]:
    return {f"x-stopwise-{k.replace('_', '-')}": str(v) for k, v in acc.items() if v is not None}


def chat_message(content: str, reasoning: str | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        msg["reasoning_content"] = reasoning
    return msg


def chat_response(rid: str, model: str, content: str, finish_reason: str, use: dict[str, Any], sw: dict[str, Any],
                  reasoning: str | None = None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": chat_message(content, reasoning), "finish_reason": finish_reason, "logprobs": None}],
        "usage": use,
        "stopwise": sw,
    }


def completion_response(rid: str, model: str, text: str, finish_reason: str, use: dict[str, Any], sw: dict[str, Any],
                        reasoning: str | None = None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}],
        "usage": use,
        "stopwise": sw,
    }


def chat_chunk(rid: str, model: str, content: str | None, finish_reason: str | None = None, *, role: bool = False,
               extra: dict[str, Any] | None = None, reasoning: str | None = None) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if reasoning is not None:
        delta["reasoning_content"] = reasoning
    if content is not None:
        delta["content"] = content
    out = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
    if extra:
        out.update(extra)
    return out


def completion_chunk(rid: str, model: str, text: str, finish_reason: str | None = None, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}],
    }
    if extra:
        out.update(extra)
    return out


def error_body(message: str, *, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """An OpenAI-shaped error body."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def models_list(ids: list[str]) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "stopwise"} for i in ids]}


class ChunkTemplate:
    """Pre-serialized stream chunks for one response: only the token text is encoded per token.

    ``sse(text)`` gives exactly ``"data: " + json.dumps(chat_chunk(...) or completion_chunk(...))``
    for a content chunk (a ``reasoning_content`` chunk with ``reasoning=True``; same keys and
    values), without building and dumping a dict per token.
    """

    def __init__(self, rid: str, model: str, chat: bool, *, reasoning: bool = False) -> None:
        import json

        if chat and reasoning:
            proto = chat_chunk(rid, model, None, reasoning="\x00")
        else:
            proto = chat_chunk(rid, model, "\x00") if chat else completion_chunk(rid, model, "\x00")
        head, tail = json.dumps(proto).split(json.dumps("\x00"))
        self.head = "data: " + head
        self.tail = tail + "\n\n"

    def sse(self, text: str) -> str:
        import json

        return self.head + json.dumps(text) + self.tail
