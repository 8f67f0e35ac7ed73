"""The OpenAI wire format as :mod:`stopwise.backends.openai_compat` reads it: server-sent-event markers,
``Retry-After`` headers, choices and the two logprob layouts (``/v1/completions``' legacy object and
``/v1/chat/completions``' content list) turned into :class:`~stopwise.backends.base.TokenStep` lists, and the
sharded httpx clients. Malformed answers are errors, never silently shortened chains.

``httpx`` is imported lazily (extra ``[http]``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

from stopwise.backends.base import TokenStep
from stopwise.errors import BackendError, MissingExtraError

DONE = object()  # the [DONE] line of a stream
MAX_RETRY_AFTER = 30.0  # seconds: the longest Retry-After a probe retry waits


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils
    import time

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when is not None else None


class ClientShards:
    """httpx clients of at most ``per`` connections each; each request takes the least busy one.

    httpcore's connection pool walks every connection it holds (with a socket poll
    per idle one) on each request and each release, so one pool's cost per
    request grows with its size (encode/httpcore#1035): with one pool of 256
    kept-alive connections, pool bookkeeping was 45% of the proxy's CPU at 64
    concurrent streams. Small pools bound that walk; clients are made as needed,
    up to ``max_connections`` connections in all.
    """

    def __init__(self, make: Any, max_connections: int, per: int = 16) -> None:
        self.make = make  # per -> httpx.AsyncClient
        self.per = max(1, min(per, max_connections))
        self.n_max = max(1, -(-max_connections // self.per))
        self.clients: list[Any] = []
        self.busy: list[int] = []

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[Any]:
        i = min(range(len(self.busy)), key=self.busy.__getitem__) if self.busy else -1
        if i < 0 or (self.busy[i] >= self.per and len(self.clients) < self.n_max):
            self.clients.append(self.make(self.per))
            self.busy.append(0)
            i = len(self.clients) - 1
        self.busy[i] += 1
        client = self.clients[i]
        try:
            yield client
        finally:
            if i < len(self.clients) and self.clients[i] is client:  # aclose() may have emptied the shards
                self.busy[i] -= 1

    async def aclose(self) -> None:
        for c in self.clients:
            await c.aclose()
        self.clients, self.busy = [], []


def httpx_module():
    try:
        import httpx
    except ImportError as exc:
        raise MissingExtraError("the OpenAI-compatible HTTP backend", "http", "httpx") from exc
    return httpx


STALL_HINT = "the server is overloaded or stalled; raise read_timeout if it is slow"
SHAPE_HINT = "is this an OpenAI-compatible /v1/completions endpoint? (vLLM, SGLang, llama.cpp's server and Ollama are)"


def steps_from_completion_logprobs(lp: dict[str, Any] | None, text: str, *, what: str = "completion",
                                    require: bool = False) -> list[TokenStep]:
    """TokenSteps from the legacy completions ``logprobs`` object (tokens, token_logprobs, top_logprobs).

    A ``logprobs`` object whose arrays differ in length, or whose values are not numbers,
    is an error (zipping them would silently drop tokens). With ``require``, text that
    comes without logprobs is an error too (a collection must not record NaN chains).
    """
    if not lp or not lp.get("tokens"):
        if require and text:
            raise BackendError(f"{what}: the upstream sent text without logprobs", retryable=False,
                               hint="this server does not return logprobs on /v1/completions; collection needs them "
                               "(vLLM, SGLang and llama.cpp's server return them)")
        return [TokenStep(text=text)] if text else []
    try:
        toks = lp["tokens"]
        n = len(toks)
        tops = lp.get("top_logprobs") or [None] * n
        lps = lp.get("token_logprobs") or [None] * n
        if not (isinstance(toks, list) and isinstance(tops, list) and isinstance(lps, list)) or len(tops) != n or len(lps) != n:
            raise ValueError(f"tokens, token_logprobs and top_logprobs have {n}, {len(lps)} and {len(tops)} entries")
        out = []
        for tok, l, top in zip(toks, lps, tops):
            items = sorted((top or {}).items(), key=lambda kv: -float(kv[1]))
            out.append(
                TokenStep(
                    text=str(tok),
                    logprob=math.nan if l is None else float(l),
                    top_tokens=[str(k) for k, _ in items],
                    top_logprobs=[float(v) for _, v in items],
                )
            )
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise BackendError(f"{what}: malformed logprobs from the upstream: {exc}", retryable=False, hint=SHAPE_HINT) from exc
    return out


def choices_of(obj: Any, what: str) -> list[dict[str, Any]]:
    """The ``choices`` of a response or stream event, checked to be a list of objects."""
    ch = obj.get("choices") if isinstance(obj, dict) else None
    if ch is None and isinstance(obj, dict):
        return []
    if not isinstance(ch, list) or not all(isinstance(c, dict) for c in ch):
        raise BackendError(f"{what}: malformed response from the upstream (no list of choice objects): {str(obj)[:160]!r}",
                           retryable=False, hint=SHAPE_HINT)
    return ch


def steps_from_chat_logprobs(lp: dict[str, Any] | None, text: str) -> list[TokenStep]:
    """TokenSteps from the chat ``logprobs.content`` list."""
    content = (lp or {}).get("content") if lp else None
    if not content:
        return [TokenStep(text=text)] if text else []
    out = []
    try:
        for e in content:
            tops = e.get("top_logprobs") or []
            out.append(
                TokenStep(
                    text=str(e.get("token", "")),
                    logprob=float(e.get("logprob", math.nan)),
                    top_tokens=[str(t.get("token", "")) for t in tops],
                    top_logprobs=[float(t.get("logprob", math.nan)) for t in tops],
                )
            )
    except (TypeError, ValueError, AttributeError) as exc:
        raise BackendError(f"chat completion: malformed logprobs from the upstream: {exc}", retryable=False,
                           hint="is this an OpenAI-compatible /v1/chat/completions endpoint?") from exc
    return out
