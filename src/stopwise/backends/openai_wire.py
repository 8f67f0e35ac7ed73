"""The OpenAI wire format as :mod:`stopwise.backends.openai_compat` reads it: server-sent-event markers,
``Retry-After`` headers, choices and the two logprob layouts (``/v1/completions``' legacy object and
``/v1/chat/completions``' content list) turned into :class:`~stopwise.backends.base.TokenStep` lists, and the
sharded httpx clients. Malformed answers are errors, never silently shortened chains.

Token ids (:data:`TOKEN_ID_FIELDS`), as the servers return them (read in their sources):

* vLLM, ``return_tokens_as_token_ids: true`` (``vllm/entrypoints/openai/completion/serving.py``,
  ``_create_completion_logprobs``; ``chat_completion/serving.py``, ``_create_chat_logprobs``): every logprob
  token, the chosen one in ``logprobs.tokens`` (chat: ``logprobs.content[].token``) and the keys of
  ``top_logprobs`` (chat: ``top_logprobs[].token``), is the string ``"token_id:N"``
  (``format_token_id_placeholder``); the token's text is then nowhere but in the choice's ``text``
  (chat: ``delta.content``), and chat's ``bytes`` are those of the placeholder. The server flag
  ``--return-tokens-as-token-ids`` does the same for every request that does not say otherwise.
* vLLM (recent) and SGLang, ``return_token_ids: true`` (vLLM ``completion/protocol.py``; SGLang
  ``python/sglang/srt/entrypoints/openai/serving_completions.py``): the choice carries ``token_ids``, the ids
  of this chunk's tokens (a stream's first chunk also ``prompt_token_ids``), next to logprob tokens that stay
  text. SGLang has no placeholder form (its OpenAI layer sets ``return_text_in_logprobs`` itself) and ignores
  unknown fields; so does vLLM (``extra="allow"``, logged; older releases and TensorRT-LLM's server use
  ``extra="forbid"`` and answer HTTP 400); llama.cpp's server and ``llama_cpp.server`` ignore both fields.

Placeholder top-logprob keys are kept as the server wrote them (``"token_id:N"``): mapping them to text
would take a detokenize request per position, and nothing here reads top tokens as text.

``httpx`` is imported lazily (extra ``[http]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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


def sse_event(line: bytes, what: str, root: str) -> Any:
    """One SSE line: its JSON event, :data:`DONE` for ``[DONE]``, None for anything else."""
    line = line.strip()
    if not line.startswith(b"data:"):
        return None  # blank separators, comments (":"), event/id fields
    data = line[5:].strip()
    if data == b"[DONE]":
        return DONE
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise BackendError(f"{what}: malformed stream chunk from {root}: {data[:120].decode(errors='replace')!r}", retryable=True) from exc
    if not isinstance(obj, dict):
        raise BackendError(f"{what}: malformed stream chunk from {root}: {data[:120].decode(errors='replace')!r}", retryable=True)
    if "error" in obj:
        err = obj["error"]
        raise BackendError(f"{what}: upstream error mid-stream: {err.get('message', err) if isinstance(err, dict) else err}", retryable=True)
    return obj


async def status_error(resp: Any, what: str) -> BackendError:
    """The :class:`BackendError` of an HTTP error answer: the upstream's message, retryable or not, a hint."""
    try:
        body = (await resp.aread()).decode("utf-8", errors="replace")
    except Exception:  # noqa: BLE001 - best effort for the message
        body = ""
    msg = body[:300]
    try:
        obj = json.loads(body)
        err = obj.get("error", obj)
        msg = err.get("message", msg) if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        pass
    code = resp.status_code
    hint = {401: "the upstream wants an API key: check it (api_key=...)", 403: "the API key is not allowed this model or endpoint",
            404: "check the URL (it should end in /v1 or be the server's root) and the model name",
            429: "the upstream is rate-limiting: fewer chains at once (lower --batch) or wait"}.get(code)
    if hint is None and code >= 500:
        hint = "the upstream failed; a collection resumes where it stopped when run again"
    return BackendError(
        f"{what}: upstream answered HTTP {code}: {msg}",
        retryable=code in (408, 409, 429) or code >= 500,
        status=code,
        hint=hint,
        retry_after=retry_after(resp.headers.get("retry-after")),
    )


async def drain(chunks: AsyncIterator[bytes], within: float = 1.0) -> None:
    """Read what follows ``[DONE]`` (the end of the chunked body) so httpx can keep the connection
    alive for the next request; an upstream that sends more or stalls is cut off after ``within`` s
    (its connection is then closed instead of reused)."""

    async def rest() -> None:
        async for _ in chunks:
            pass

    # a timeout or a broken tail: the events are already delivered
    with contextlib.suppress(Exception):
        await asyncio.wait_for(rest(), within)


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


#: what a generation request sends to ask for token ids (see the module docstring); a non-streamed request
#: sends only ``return_token_ids``: with placeholders its one choice's text could not be split into tokens
TOKEN_ID_FIELDS = ("return_tokens_as_token_ids", "return_token_ids")
PLACEHOLDER = "token_id:"


def placeholder_id(token: Any) -> int | None:
    """``N`` from vLLM's ``"token_id:N"``; None for a token given as text."""
    if isinstance(token, str) and token.startswith(PLACEHOLDER):
        digits = token[len(PLACEHOLDER):]
        if digits.isascii() and digits.isdigit():
            return int(digits)
    return None


def _id_list(ids: Any, n: int) -> list[int] | None:
    """A choice's ``token_ids`` (vLLM's and SGLang's ``return_token_ids``) if it names ``n`` tokens, else None."""
    if isinstance(ids, list) and len(ids) == n and n and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        return ids
    return None


def _texts_and_ids(tokens: list[Any], text: str, token_ids: Any) -> tuple[list[str], list[int | None]]:
    """Each token's text and id, all-or-nothing: ids for every token of the choice or for none.

    Placeholder tokens (``"token_id:N"``) carry no text: the choice's text goes to the first
    token and ``""`` to the others. A stream sends one token a chunk (vLLM's default stream
    interval), so the texts are then per token; a chunk of k tokens (a larger stream interval)
    gives its k tokens' text to its first position, and the chain's text stays exact.
    """
    pids = [placeholder_id(t) for t in tokens]
    if any(p is not None for p in pids):
        texts = [text] + [""] * (len(tokens) - 1)
    else:
        texts = [str(t) for t in tokens]
    if all(p is not None for p in pids):
        return texts, list(pids)
    ids = _id_list(token_ids, len(tokens))
    return texts, list(ids) if ids is not None else [None] * len(tokens)


def steps_from_completion_logprobs(lp: dict[str, Any] | None, text: str, *, what: str = "completion",
                                    require: bool = False, token_ids: Any = None) -> list[TokenStep]:
    """TokenSteps from the legacy completions ``logprobs`` object (tokens, token_logprobs, top_logprobs).

    A ``logprobs`` object whose arrays differ in length, or whose values are not numbers,
    is an error (zipping them would silently drop tokens). With ``require``, text that
    comes without logprobs is an error too (a collection must not record NaN chains).

    Token ids come from vLLM's ``"token_id:N"`` tokens, else from ``token_ids`` (the choice's
    ``token_ids``, one per logprob token); see :func:`_texts_and_ids`.
    """
    if not lp or not lp.get("tokens"):
        if require and text:
            raise BackendError(f"{what}: the upstream sent text without logprobs", retryable=False,
                               hint="this server does not return logprobs on /v1/completions; collection needs them "
                               "(vLLM, SGLang and llama.cpp's server return them)")
        one = _id_list(token_ids, 1)
        return [TokenStep(text=text, token_id=one[0] if one else None)] if text else []
    try:
        toks = lp["tokens"]
        n = len(toks)
        tops = lp.get("top_logprobs") or [None] * n
        lps = lp.get("token_logprobs") or [None] * n
        if not (isinstance(toks, list) and isinstance(tops, list) and isinstance(lps, list)) or len(tops) != n or len(lps) != n:
            raise ValueError(f"tokens, token_logprobs and top_logprobs have {n}, {len(lps)} and {len(tops)} entries")
        texts, ids = _texts_and_ids(toks, text, token_ids)
        out = []
        for tok_text, tid, l, top in zip(texts, ids, lps, tops):
            items = sorted((top or {}).items(), key=lambda kv: -float(kv[1]))
            out.append(
                TokenStep(
                    text=tok_text,
                    token_id=tid,
                    logprob=math.nan if l is None else float(l),
                    top_tokens=[str(k) for k, _ in items],
                    top_logprobs=[float(v) for _, v in items],
                )
            )
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise BackendError(f"{what}: malformed logprobs from the upstream: {exc}", retryable=False, hint=SHAPE_HINT) from exc
    return out


class ChainIds:
    """Keeps one streamed chain's token ids all-or-nothing.

    A chain whose chunks all carry ids keeps them (its probes send token ids); once a chunk
    comes without them (an upstream that mixes), every step of the chain loses its id, those
    already handed out included (they are the objects the caller holds), so later probes of
    the chain all send text. A probe already sent with ids is not undone.
    """

    def __init__(self) -> None:
        self.state: bool | None = None  # None: no step yet; True: every step so far has an id; False: none keeps one
        self._with_ids: list[TokenStep] = []
        self.choices = 0  # choices seen, for the stream's "no choices" check

    def add(self, steps: list[TokenStep]) -> list[TokenStep]:
        if not steps:
            return steps
        has = all(s.token_id is not None for s in steps)
        if self.state is None:
            self.state = has
        if self.state and has:
            self._with_ids.extend(steps)
            return steps
        if self.state:  # mixed: drop every id of this chain
            for s in self._with_ids:
                s.token_id = None
            self._with_ids = []
            self.state = False
        for s in steps:
            s.token_id = None
        return steps


def choices_of(obj: Any, what: str) -> list[dict[str, Any]]:
    """The ``choices`` of a response or stream event, checked to be a list of objects."""
    ch = obj.get("choices") if isinstance(obj, dict) else None
    if ch is None and isinstance(obj, dict):
        return []
    if not isinstance(ch, list) or not all(isinstance(c, dict) for c in ch):
        raise BackendError(f"{what}: malformed response from the upstream (no list of choice objects): {str(obj)[:160]!r}",
                           retryable=False, hint=SHAPE_HINT)
    return ch


def steps_from_chat_logprobs(lp: dict[str, Any] | None, text: str, *, token_ids: Any = None) -> list[TokenStep]:
    """TokenSteps from the chat ``logprobs.content`` list.

    Token ids, all-or-nothing over the list: vLLM's ``"token_id:N"`` tokens (their text is then
    ``text``, the delta's content, given to the first token), else ``token_ids`` (the choice's,
    vLLM's ``return_token_ids``), else each entry's ``id`` (llama.cpp's server writes one).
    """
    content = (lp or {}).get("content") if lp else None
    if not content:
        one = _id_list(token_ids, 1)
        return [TokenStep(text=text, token_id=one[0] if one else None)] if text else []
    out = []
    try:
        toks = [e.get("token", "") for e in content]
        texts, ids = _texts_and_ids(toks, text, token_ids)
        if any(i is None for i in ids):
            own = _id_list([e.get("id") for e in content], len(content))
            if own is not None:
                ids = list(own)
        for e, tok_text, tid in zip(content, texts, ids):
            tops = e.get("top_logprobs") or []
            out.append(
                TokenStep(
                    text=tok_text,
                    token_id=tid,
                    logprob=float(e.get("logprob", math.nan)),
                    top_tokens=[str(t.get("token", "")) for t in tops],
                    top_logprobs=[float(t.get("logprob", math.nan)) for t in tops],
                )
            )
    except (TypeError, ValueError, AttributeError) as exc:
        raise BackendError(f"chat completion: malformed logprobs from the upstream: {exc}", retryable=False,
                           hint="is this an OpenAI-compatible /v1/chat/completions endpoint?") from exc
    return out
