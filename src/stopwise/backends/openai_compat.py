"""Any OpenAI-compatible HTTP server as a backend: vLLM, SGLang, llama.cpp's
server, ``llama_cpp.server``, Ollama, or a hosted API.

Chains go through ``/v1/completions`` with a raw prompt (the chat template is
applied here, client-side), so probes and answer forcing can continue a prefix
exactly; plain chat goes through ``/v1/chat/completions``. Streams are read as
server-sent events with ``logprobs``; closing the iterator closes the HTTP
stream, which is how every one of these servers learns to stop generating.

* ``n``: some servers ignore it; :meth:`OpenAICompatBackend.sample` asks once,
  counts the choices, and falls back to parallel requests if it got fewer.
* Token ids: with ``token_ids=True``, or by default once ``GET /v1/models`` names vLLM or
  SGLang as the owner, a streamed generation asks for them (``return_tokens_as_token_ids``:
  vLLM's ``"token_id:N"`` logprob tokens, whose text is taken from the chunk's text;
  ``return_token_ids``: the choice's ``token_ids``, recent vLLM and SGLang); a non-streamed
  one asks only for ``return_token_ids``. An upstream that refuses the fields (HTTP 400/422)
  gets the request once more without them, and never again; one that ignores them
  (llama.cpp's server) gives steps without ids. ``capabilities.token_ids`` says what the
  upstream showed. A chain keeps ids only if every chunk carried them
  (:class:`~stopwise.backends.openai_wire.ChainIds`).
* Prefix continuation sends token ids where every step of the prefix carries one and the
  server accepts a token-id prompt (vLLM, SGLang), detected once: the prompt's and the
  forcing string's ids come from the server's ``/tokenize``. Otherwise it sends the prefix
  text, which the server tokenizes again (not always into the chain's tokens).
* Timeouts: connect, and read (a stall longer than ``read_timeout`` between two
  chunks, or longer than that with only keep-alive comments, ends the stream with a
  retryable :class:`BackendError`); a non-streamed answer must be complete within
  ``2 * read_timeout``. Probe requests are idempotent and retried ``retries`` times
  on retryable errors; generation is not. Malformed answers (no choices, logprob
  arrays of different lengths, non-numbers) are errors, never silently shortened chains.

``httpx`` is imported lazily (extra ``[http]``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any

from stopwise.backends.base import (
    Backend,
    Capabilities,
    ChainResult,
    Sampling,
    TokenStep,
)
from stopwise.backends.openai_wire import (
    DONE,
    MAX_RETRY_AFTER,
    SHAPE_HINT,
    STALL_HINT,
    TOKEN_ID_FIELDS,
    ChainIds,
    ClientShards,
    choices_of,
    drain,
    httpx_module,
    sse_event,
    status_error,
    steps_from_chat_logprobs,
    steps_from_completion_logprobs,
)
from stopwise.backends.probes import forced_span
from stopwise.errors import BackendError


class OpenAICompatBackend(Backend):
    """A backend that speaks the OpenAI HTTP API.

    Parameters
    ----------
    base_url : str
        e.g. ``http://127.0.0.1:8080`` (``/v1`` is added when missing).
    model : str, optional
        The ``model`` field sent upstream (default: the first of ``GET /v1/models``).
    api_key : str, optional
        Sent as a bearer token.
    chat_template : str, optional
        A Jinja chat template for client-side rendering; without one the backend asks
        the server (llama.cpp's ``/props``) and otherwise uses ChatML.
    top_logprobs : int
        Top logprobs requested per position (most servers allow up to 5 or 20).
    connect_timeout, read_timeout : float
        Seconds to connect, and the longest silence between two chunks.
    retries : int
        Retries of idempotent requests (probes, forcing) on retryable errors; generation is not
        retried (a request that timed out may still be decoding upstream).
    max_connections : int
        Upstream connections open at once, all kept alive between requests.
    token_ids : bool, optional
        Ask generations for token ids (see the module docstring). None (the default): ask where
        ``GET /v1/models`` (asked only when ``model`` is not given) names vLLM or SGLang.
    """

    capabilities = Capabilities(logprobs=True, top_k=5, prefix_continuation=True)

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        chat_template: str | None = None,
        top_logprobs: int = 5,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        retries: int = 2,
        max_connections: int = 256,
        token_ids: bool | None = None,
    ) -> None:
        httpx = httpx_module()
        url = base_url.rstrip("/")
        try:
            parsed = httpx.URL(url)
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise ValueError("needs http:// or https:// and a host")
            if parsed.port is not None and not 0 < parsed.port < 65536:
                raise ValueError(f"port {parsed.port} is out of range")
        except (ValueError, TypeError, httpx.InvalidURL) as exc:
            raise BackendError(f"upstream URL '{base_url}' is not valid: {exc}", retryable=False,
                               hint="e.g. http://127.0.0.1:8080/v1") from exc
        self.root = url[: -len("/v1")] if url.endswith("/v1") else url
        self.base = self.root + "/v1"
        self.name = model or "upstream"
        self._model = model
        self._model_fetch: asyncio.Task | None = None  # the GET /v1/models in flight, shared by its callers
        self._template = chat_template
        self.top_logprobs = top_logprobs
        self.retries = retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=10.0, pool=connect_timeout)
        # a whole non-streamed answer: its first byte within read_timeout (httpx), all of it within this
        self.request_deadline = 2 * read_timeout + connect_timeout
        # the metadata endpoints (/v1/models, /props) answer at once on a live server
        self.meta_timeout = httpx.Timeout(connect=connect_timeout, read=min(read_timeout, 10.0), write=10.0, pool=connect_timeout)
        # keep every connection alive (httpx keeps 20 by default): under many concurrent streams the
        # others would reconnect for each request
        self._clients = ClientShards(
            lambda per: httpx.AsyncClient(headers=headers, timeout=self.timeout,
                                          limits=httpx.Limits(max_connections=per, max_keepalive_connections=per)),
            max_connections,
        )
        self.n_supported: bool | None = None
        self.token_prompts: bool | None = None
        self.token_ids = token_ids
        self._ids_wanted = token_ids is True  # auto (None) turns it on when /v1/models names vLLM or SGLang
        # what the upstream showed: True, ids came back; False, it refused the fields or ignored them
        self.token_ids_supported: bool | None = None
        self.capabilities = dataclasses.replace(type(self).capabilities, token_ids=False)

    # ---- errors ---------------------------------------------------------------------------

    def _map(self, exc: Exception, what: str) -> BackendError:
        httpx = httpx_module()
        if isinstance(exc, BackendError):
            return exc
        if isinstance(exc, httpx.ConnectError):
            return BackendError(f"{what}: cannot connect to {self.root}: {exc}", retryable=True, hint="is the server running and the URL right?")
        if isinstance(exc, httpx.PoolTimeout):
            return BackendError(f"{what}: no free connection to {self.root} within {self.timeout.pool} s "
                                "(this client's max_connections are all busy)", retryable=True,
                                hint="fewer chains at once (lower --batch), or raise max_connections")
        if isinstance(exc, httpx.TimeoutException):
            return BackendError(f"{what}: upstream {self.root} timed out ({type(exc).__name__})", retryable=True, hint=STALL_HINT)
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
            return BackendError(f"{what}: connection to {self.root} broke: {exc}", retryable=True)
        return BackendError(f"{what}: {type(exc).__name__}: {exc}")

    async def _post_json(self, path: str, body: dict[str, Any], what: str, *, retry: bool) -> dict[str, Any]:
        attempts = 1 + (self.retries if retry else 0)
        last: BackendError | None = None
        async def once() -> Any:
            async with self._clients.use() as client:
                resp = await client.post(self.base + path, json=body)
            if resp.status_code >= 400:
                raise await status_error(resp, what)
            try:
                obj = resp.json()
            except ValueError as exc:
                raise BackendError(f"{what}: malformed response from {self.root} (not JSON): {resp.text[:200]!r}", retryable=True) from exc
            if not isinstance(obj, dict):
                raise BackendError(f"{what}: malformed response from {self.root} (not a JSON object): {resp.text[:200]!r}",
                                   retryable=False, hint=SHAPE_HINT)
            return obj

        for i in range(attempts):
            try:
                try:
                    return await asyncio.wait_for(once(), self.request_deadline)
                except asyncio.TimeoutError as exc:
                    raise BackendError(f"{what}: upstream {self.root} did not finish its answer within {self.request_deadline:.0f} s",
                                       retryable=True, hint=STALL_HINT) from exc
            except Exception as exc:  # noqa: BLE001 - mapped here, at the boundary
                last = self._map(exc, what)
                if not last.retryable or i == attempts - 1:
                    raise last from exc
                # the upstream's Retry-After where it gave one (capped), else a short exponential backoff
                await asyncio.sleep(max(0.2 * 2**i, min(last.retry_after or 0.0, MAX_RETRY_AFTER)))
        raise last  # type: ignore[misc]

    # ---- model and template --------------------------------------------------------------

    async def model_id(self) -> str:
        """The ``model`` field sent upstream: the given one, else the first served (asked once:
        chains that start together share one ``GET /v1/models``; a failure is asked again next time)."""
        if self._model is not None:
            return self._model
        task = self._model_fetch
        # another event loop's request (that loop is closed, or it is not ours to await) is not shared
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = self._model_fetch = asyncio.ensure_future(self._fetch_model_id())
            task.add_done_callback(self._model_fetched)
        return await asyncio.shield(task)  # a caller cancelled does not cancel the others' request

    def _model_fetched(self, task: asyncio.Task) -> None:
        if self._model_fetch is task:  # a failure is asked again by the next call
            self._model_fetch = None
        if not task.cancelled():
            task.exception()  # retrieved, even if every caller left

    async def _fetch_model_id(self) -> str:
        """One ``GET /v1/models`` (``model_id`` shares it): the first model served becomes ``model``."""
        try:
            async with self._clients.use() as client:
                resp = await client.get(self.base + "/models", timeout=self.meta_timeout)
            if resp.status_code >= 400:
                raise await status_error(resp, "GET /v1/models")
            try:
                data = resp.json().get("data") or []
                if not isinstance(data, list) or not all(isinstance(d, dict) and isinstance(d.get("id"), str) for d in data):
                    raise ValueError("'data' is not a list of objects with an 'id'")
            except (ValueError, AttributeError) as exc:
                raise BackendError(f"GET /v1/models: malformed response from {self.root} (not the OpenAI model list): {resp.text[:120]!r}",
                                   retryable=False, hint="check the URL: it should be the server's root or end in /v1") from exc
        except Exception as exc:  # noqa: BLE001
            raise self._map(exc, "GET /v1/models") from exc
        if not data:
            raise BackendError(f"{self.base}/models lists no model", hint="pass model=... (the name the server serves)")
        self._model = data[0]["id"]
        self.name = self._model
        if self.token_ids is None and str(data[0].get("owned_by", "")).lower() in ("vllm", "sglang"):
            self._ids_wanted = True
        return self._model

    def model_info(self) -> dict[str, Any]:
        return {"model": self._model or self.name, "backend": f"OpenAI-compatible HTTP ({self.root})", "chat_template": self._template}

    async def fetch_chat_template(self) -> str | None:
        """The template the server reports (llama.cpp server's ``/props``), if any."""
        if self._template is None:
            try:
                async with self._clients.use() as client:
                    resp = await client.get(self.root + "/props", timeout=self.meta_timeout)
                if resp.status_code == 200:
                    tpl = resp.json().get("chat_template") or None
                    self._template = tpl if isinstance(tpl, str) else None
            except Exception:  # noqa: BLE001 - optional endpoint
                pass
            if self._template:
                try:
                    self.render_chat([{"role": "user", "content": "x"}])
                except Exception as exc:  # noqa: BLE001 - jinja's errors, and a template's own raise_exception
                    self._template = None
                    raise BackendError(f"GET /props: the server's chat template does not render: {type(exc).__name__}: {exc}",
                                       retryable=False, hint="fix the server's template (llama.cpp: --chat-template) or pass chat_template=...") from exc
        return self._template

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        if self._template:
            from stopwise.backends.chat import render_chat_template

            return render_chat_template(self._template, messages)
        # ChatML (Qwen, SmolLM2 and many others)
        parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
        return "".join(parts) + "<|im_start|>assistant\n"

    # ---- generation -------------------------------------------------------------------------

    def _completion_body(self, prompt: Any, sampling: Sampling, *, stream: bool, n: int = 1) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model,
            "prompt": prompt,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stream": stream,
            "logprobs": self.top_logprobs,
            "n": n,
        }
        if sampling.top_k > 0:
            body["top_k"] = sampling.top_k
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.ignore_eos:  # vLLM's, SGLang's and llama.cpp server's extension; sent only when asked
            body["ignore_eos"] = True
        return body

    async def _sse(self, path: str, body: dict[str, Any], what: str) -> AsyncIterator[dict[str, Any]]:
        """Yield the JSON events of one streamed request; closing it closes the HTTP stream."""
        try:
            async with self._clients.use() as client, client.stream("POST", self.base + path, json=body) as resp:
                if resp.status_code >= 400:
                    raise await status_error(resp, what)
                # SSE over the byte stream: split lines on b"\n" ourselves and hand json.loads the bytes
                # (httpx's aiter_lines decodes and re-splits every chunk in two more generator layers,
                # which was the largest share of the proxy's CPU per streamed token)
                buf = b""
                chunks = resp.aiter_bytes()
                # keep-alive comments reset httpx's read timeout; only data events count as progress
                clock = asyncio.get_running_loop().time
                last_event = clock()
                events = 0
                async for chunk in chunks:
                    lines = (buf + chunk).split(b"\n")
                    buf = lines.pop()
                    for line in lines:
                        obj = sse_event(line, what, self.root)
                        if obj is DONE:
                            await drain(chunks)
                            return
                        if obj is not None:
                            events += 1
                            last_event = clock()
                            yield obj
                    if clock() - last_event > self.timeout.read:
                        raise BackendError(f"{what}: upstream {self.root} sent no token for {self.timeout.read:.0f} s "
                                           "(only keep-alive comments)", retryable=True,
                                           hint=STALL_HINT)
                    if len(buf) > 1 << 20 and not events:
                        break  # a megabyte without a line break is not an event stream
                obj = sse_event(buf, what, self.root)  # a last line without its newline
                if obj is DONE:
                    return
                if obj is not None:
                    yield obj
                    events += 1
                if not events and buf.strip():
                    ctype = resp.headers.get("content-type", "none")
                    raise BackendError(f"{what}: upstream {self.root} answered a streamed request with a non-stream body "
                                       f"(content-type {ctype}): {buf[:120].decode(errors='replace')!r}", retryable=False,
                                       hint="the endpoint does not stream server-sent events; is the URL an OpenAI-compatible /v1?")
                raise BackendError(f"{what}: upstream {self.root} ended the stream without [DONE]", retryable=True)
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped here
            if isinstance(exc, (GeneratorExit, asyncio.CancelledError)):
                raise
            raise self._map(exc, what) from exc

    async def stream(self, prompt: str, sampling: Sampling, *, logprobs: bool = True,
                     require_logprobs: bool = False) -> AsyncIterator[TokenStep]:
        """Stream one chain. With ``require_logprobs`` (collection), text without logprobs
        is an error instead of steps with NaN logprobs."""
        await self.model_id()
        body = self._completion_body(prompt, sampling, stream=True)
        if not logprobs:
            body.pop("logprobs")
        asked = self._ask_ids(body, stream=True)
        what = "POST /v1/completions"
        require = require_logprobs and logprobs
        events, obj = await self._open_stream(body, what)
        chain = ChainIds()
        try:
            if obj is not None:
                for st in self._chunk_steps(obj, what, require, chain, asked):
                    yield st
                async for obj in events:
                    for st in self._chunk_steps(obj, what, require, chain, asked):
                        yield st
        finally:
            await events.aclose()
        if not chain.choices:
            raise BackendError(f"{what}: the upstream's stream carried no choices", retryable=False, hint=SHAPE_HINT)

    def _chunk_steps(self, obj: dict[str, Any], what: str, require: bool, chain: ChainIds, asked: bool) -> list[TokenStep]:
        """The steps of one stream event, their token ids kept all-or-nothing over the chain."""
        out: list[TokenStep] = []
        for ch in choices_of(obj, what):
            chain.choices += 1
            lp = ch.get("logprobs")
            steps = steps_from_completion_logprobs(lp, ch.get("text") or "", what=what, require=require, token_ids=ch.get("token_ids"))
            if steps and lp and lp.get("tokens"):
                self._ids_seen(steps[0].token_id is not None, asked)
            out += chain.add(steps)
        return out

    async def stream_chat(self, messages: Sequence[dict[str, str]], sampling: Sampling) -> AsyncIterator[TokenStep]:
        """Stream a chat completion (the server applies its own template)."""
        await self.model_id()
        body: dict[str, Any] = {
            "model": self._model,
            "messages": list(messages),
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stream": True,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.ignore_eos:
            body["ignore_eos"] = True
        events = self._sse("/chat/completions", body, "POST /v1/chat/completions")
        try:
            async for obj in events:
                for ch in choices_of(obj, "POST /v1/chat/completions"):
                    delta = ch.get("delta") or {}
                    for st in steps_from_chat_logprobs(ch.get("logprobs"), delta.get("content") or "", token_ids=ch.get("token_ids")):
                        yield st
        finally:
            await events.aclose()

    async def sample(self, prompt: str, sampling: Sampling, n: int) -> list[ChainResult]:
        await self.model_id()
        results: list[ChainResult] = []
        if self.n_supported is not False and n > 1:
            # generation is not retried: a request that timed out may still be decoding upstream
            body = self._completion_body(prompt, sampling, stream=False, n=n)
            self._ask_ids(body, stream=False)
            obj = await self._post_generation(body, "POST /v1/completions (n)")
            choices = choices_of(obj, "POST /v1/completions (n)")
            self.n_supported = len(choices) >= n
            # the chains of one n-request share its seed, and none of them is reproduced by it alone:
            # a chain records the seed only where it was the request's one answer (a server that ignores n)
            one_seed = sampling.seed if len(choices) == 1 else None
            for ch in choices[:n]:
                steps = self._choice_steps(ch, "POST /v1/completions (n)")
                results.append(ChainResult(steps, ch.get("finish_reason") or "stop", seed=one_seed))
        rest = n - len(results)
        if rest > 0:
            async def one(i: int) -> ChainResult:
                seed = None if sampling.seed is None else sampling.seed + len(results) + i
                s = dataclasses.replace(sampling, seed=seed)
                body = self._completion_body(prompt, s, stream=False)
                self._ask_ids(body, stream=False)
                obj = await self._post_generation(body, "POST /v1/completions")
                ch = (choices_of(obj, "POST /v1/completions") or [{}])[0]
                return ChainResult(self._choice_steps(ch, "POST /v1/completions"), ch.get("finish_reason") or "stop", seed=seed)

            results += await asyncio.gather(*(one(i) for i in range(rest)))
        return results

    async def continue_prefix(self, prompt: str, prefix: Sequence[TokenStep], forcing: str, max_tokens: int):
        await self.model_id()
        # greedy, to the end of the line at most: the answer is read up to its closing brace (forced_span)
        greedy = Sampling(temperature=0.0, top_p=1.0, top_k=0, max_tokens=max_tokens, seed=0, stop=("\n",))
        ids = [s.token_id for s in prefix]
        obj = None
        if self.token_prompts is not False and prefix and all(i is not None for i in ids):
            # token-id prompts (vLLM, SGLang) need the prompt's ids too, which only the
            # server's tokenizer gives; use its /tokenize where it has one
            obj = await self._try_token_prompt(prompt, ids, forcing, greedy)
        if obj is None:
            text = prompt + "".join(s.text for s in prefix) + forcing
            obj = await self._post_json("/completions", self._probe_body(text, greedy), "POST /v1/completions (probe)", retry=True)
        what = "POST /v1/completions (probe)"
        ch = (choices_of(obj, what) or [{}])[0]
        steps = steps_from_completion_logprobs(ch.get("logprobs"), ch.get("text") or "", what=what)
        usage = obj.get("usage") or {}
        try:
            if (ch.get("logprobs") or {}).get("tokens"):
                # up to the answer's end, as the embedded engine decodes a probe: the text, logprob and
                # decoded tokens of what a server wrote after the closing brace are not the probe's
                text, lp, dec = forced_span((s.text, s.logprob) for s in steps)
            else:  # no per-token logprobs: the whole text, the server's count
                text, lp, dec = str(ch.get("text") or ""), 0.0, int(usage.get("completion_tokens") or 0)
            return text, lp, int(usage.get("prompt_tokens") or 0), dec
        except (TypeError, ValueError, AttributeError) as exc:
            raise BackendError(f"{what}: malformed usage from the upstream: {usage!r}", retryable=False, hint=SHAPE_HINT) from exc

    async def _try_token_prompt(self, prompt: str, ids: list, forcing: str, greedy: Sampling) -> dict[str, Any] | None:
        try:
            async with self._clients.use() as client:
                resp = await client.post(self.root + "/tokenize", json={"model": self._model, "prompt": prompt, "content": prompt})
            if resp.status_code != 200:
                self.token_prompts = False
                return None
            data = resp.json()
            head = data.get("tokens") or []
            # no BOS before the forcing string: llama.cpp's server reads add_special, vLLM and SGLang add_special_tokens
            # (their default is true); the prompt's head keeps each server's default, as a text prompt would
            async with self._clients.use() as client:
                resp = await client.post(self.root + "/tokenize", json={"model": self._model, "prompt": forcing, "content": forcing,
                                                                        "add_special": False, "add_special_tokens": False})
            tail = resp.json().get("tokens") or [] if resp.status_code == 200 else None
            if not head or tail is None or not all(isinstance(t, int) for t in head + tail):
                self.token_prompts = False
                return None
            obj = await self._post_json("/completions", self._probe_body(head + ids + tail, greedy), "POST /v1/completions (token probe)", retry=True)
            self.token_prompts = True
            return obj
        except BackendError as exc:
            if exc.status is not None and 400 <= exc.status < 500:
                self.token_prompts = False
                return None
            raise
        except Exception:  # noqa: BLE001 - the optional endpoint is absent or different
            self.token_prompts = False
            return None

    def _probe_body(self, prompt: Any, greedy: Sampling) -> dict[str, Any]:
        body = self._completion_body(prompt, greedy, stream=False)
        if self.token_ids_supported:
            # a probe reads its tokens' texts: not vLLM's placeholders, even where the server was started with
            # --return-tokens-as-token-ids (the request's false wins over that flag)
            body["return_tokens_as_token_ids"] = False
        return body

    # ---- token ids ---------------------------------------------------------------------------

    def _ask_ids(self, body: dict[str, Any], *, stream: bool) -> bool:
        """Add the token-id fields to a generation's ``body`` where this upstream is to be asked; True if added.

        A non-streamed answer gets no placeholders: its one text could not be split into its tokens."""
        if not (self._ids_wanted and self.token_ids_supported is not False and "logprobs" in body):
            return False
        if stream:
            body["return_tokens_as_token_ids"] = True
        body["return_token_ids"] = True
        return True

    def _ids_seen(self, seen: bool, asked: bool) -> None:
        """What the first choice with logprob tokens showed: ids (``capabilities.token_ids`` from now on),
        or none although a stream asked for both fields (the upstream ignores them: stop sending them)."""
        if self.token_ids_supported is None and (seen or asked):
            self.token_ids_supported = seen
            self.capabilities = dataclasses.replace(self.capabilities, token_ids=seen)

    def _ids_refused(self, exc: BackendError, body: dict[str, Any]) -> dict[str, Any] | None:
        """``body`` without the token-id fields where ``exc`` may be the upstream refusing them, else None."""
        if exc.status in (400, 422) and any(k in body for k in TOKEN_ID_FIELDS):
            return {k: v for k, v in body.items() if k not in TOKEN_ID_FIELDS}
        return None

    def _forget_ids(self) -> None:
        """The upstream refused the token-id fields (the same request without them went through): never again."""
        self.token_ids_supported = False
        self.capabilities = dataclasses.replace(self.capabilities, token_ids=False)

    async def _open_stream(self, body: dict[str, Any], what: str) -> tuple[AsyncIterator[dict[str, Any]], Any]:
        """Start a streamed generation: its events and the first one (None if none came).

        An upstream that answers the token-id fields with HTTP 400 or 422 (before any event: nothing
        was decoded, so sending the generation again is safe) gets it once more without them."""
        events = self._sse("/completions", body, what)
        try:
            return events, await anext(events, None)
        except BackendError as exc:  # the generator has ended with its error
            plain = self._ids_refused(exc, body)
            if plain is None:
                raise
        except BaseException:
            await events.aclose()
            raise
        events = self._sse("/completions", plain, what)
        try:
            first = await anext(events, None)
        except BaseException:
            await events.aclose()
            raise
        self._forget_ids()
        return events, first

    async def _post_generation(self, body: dict[str, Any], what: str) -> dict[str, Any]:
        """A non-streamed generation (not retried), sent once more without the token-id fields if refused for them."""
        try:
            return await self._post_json("/completions", body, what, retry=False)
        except BackendError as exc:
            plain = self._ids_refused(exc, body)
            if plain is None:
                raise
        obj = await self._post_json("/completions", plain, what, retry=False)
        self._forget_ids()
        return obj

    def _choice_steps(self, ch: dict[str, Any], what: str) -> list[TokenStep]:
        """A non-streamed choice's steps. It asked for ``return_token_ids`` only, which older vLLM ignores
        though its streams give placeholders: only ids seen count, not their absence."""
        lp = ch.get("logprobs")
        steps = steps_from_completion_logprobs(lp, ch.get("text") or "", what=what, token_ids=ch.get("token_ids"))
        if steps and lp and lp.get("tokens"):
            self._ids_seen(steps[0].token_id is not None, asked=False)
        return steps

    async def aclose(self) -> None:
        # a model-list request whose callers all left must not outlive the clients (or open a new one)
        task = self._model_fetch
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._clients.aclose()
