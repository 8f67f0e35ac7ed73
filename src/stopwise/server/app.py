"""The ASGI app: ``create_app(settings)`` (FastAPI), thin over the library.

Each request is either passed through (policy ``off``, or no policy loaded) as
one chain streamed from the backend, or run by the live driver
(:mod:`stopwise.engine.live`) with a calibrated policy loaded from a policy file.
The response carries the standard ``usage`` and a ``stopwise`` object.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import random
import time
from typing import Any

import numpy as np

from stopwise.backends.base import Backend, Sampling
from stopwise.backends.probes import ProbeSchedule, forced_answer
from stopwise.engine.live import AnswerClasses, LiveDriver
from stopwise.engine.text_chain import TextProbeChain
from stopwise.errors import BackendError, ConfigError, MissingExtraError, StopwiseError
from stopwise.server import protocol as P
from stopwise.server.loading import LoadedPolicy, Metrics, load_policy, make_backend  # noqa: F401 - re-exported
from stopwise.server.reasoning import ReasoningOutput, check_upstream, probe_kind
from stopwise.server.settings import ServeSettings
from stopwise.stats.anytime import RiskMonitor

log = logging.getLogger("stopwise.serve")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def create_app(settings: ServeSettings, backend: Backend | None = None):  # noqa: ANN201 - FastAPI
    """Build the app. ``backend`` overrides ``settings.backend`` (tests, embedding)."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    except ImportError as exc:
        raise MissingExtraError("stopwise serve", "serve", "fastapi") from exc

    if settings.host not in LOOPBACK and not settings.api_key:
        raise ConfigError(f"binding {settings.host} (not loopback) needs an API key", hint="pass --api-key or set STOPWISE_API_KEY")
    policies: dict[str, list[LoadedPolicy]] = {}
    for path in settings.policies:
        lp = load_policy(path)
        policies.setdefault(lp.name, []).append(lp)
    be = backend or make_backend(settings.backend, settings)
    for lps in policies.values():
        for lp in lps:
            check_upstream(lp.doc, lp.path, be.capabilities, settings.backend)
    if settings.profile:
        from stopwise.backends.profiles import detect_profile

        detect_profile(None, None, override=settings.profile)  # a bad profile fails at start-up, naming its key
    esc = make_backend(settings.escalate_to, settings, api="completions") if settings.escalate_to else None
    esc_name = (esc.model_info().get("model") if esc is not None and hasattr(esc, "model_info") else None) or settings.escalate_to
    if not policies:
        log.warning("no --policy given: requests are passed through unchanged (no early stopping, nothing certified)")
    metrics = Metrics()
    monitors: dict[str, RiskMonitor] = {}
    shadows: set[asyncio.Task] = set()
    rng = random.Random(0)
    gate = asyncio.Semaphore(settings.max_concurrent)
    schedule = ProbeSchedule(settings.probe_every, settings.cue_probes)
    model_name = settings.model_name or getattr(be, "name", "model")

    @contextlib.asynccontextmanager
    async def lifespan(_app):  # noqa: ANN001, ANN202
        yield
        await be.aclose()
        if esc is not None:
            await esc.aclose()

    app = FastAPI(title="stopwise", version="0.1", lifespan=lifespan)
    app.state.backend = be
    app.state.metrics = metrics
    app.state.policies = policies
    app.state.monitors = monitors
    app.state.shadows = shadows

    resolved: dict[str, Any] = {}

    async def get_profile():  # noqa: ANN202
        """The model's reasoning profile: the setting, else detected from the model name and template (once)."""
        if "profile" not in resolved:
            from stopwise.backends.profiles import detect_profile

            model = settings.model_name
            if model is None and hasattr(be, "model_id"):
                with contextlib.suppress(StopwiseError):
                    model = await be.model_id()
            if hasattr(be, "fetch_chat_template") and settings.upstream_api == "completions":
                with contextlib.suppress(StopwiseError):
                    await be.fetch_chat_template()  # the server's template (llama.cpp's /props): detection, and client-side rendering
            info = be.model_info() or {}
            model = model or info.get("model") or getattr(be, "name", None)
            resolved["profile"] = detect_profile(model, info.get("chat_template"), override=settings.profile)
            if hasattr(be, "profile") and getattr(be, "profile", None) is None:
                be.profile = resolved["profile"]
        return resolved["profile"]

    def forcing_of(profile) -> tuple[str, str]:  # noqa: ANN001
        """The answer-forcing string and what closes the answer: the setting where given, else the profile's."""
        if "forcing" in settings.model_fields_set:
            f = settings.forcing
            return f, ("}$" if f.endswith("$\\boxed{") else "}" if f.endswith("{") else "")
        return profile.forcing("math"), profile.answer_suffix("math")

    def err(status: int, message: str, *, param: str | None = None, type_: str = "invalid_request_error", headers: dict | None = None):
        return JSONResponse(P.error_body(message, type_=type_, param=param), status_code=status, headers=headers)

    @app.exception_handler(ConfigError)
    async def _config(_req: Request, exc: ConfigError):  # noqa: ANN202
        return err(400, str(exc), param="stopwise" if "stopwise" in str(exc) else None)

    @app.exception_handler(BackendError)
    async def _upstream(_req: Request, exc: BackendError):  # noqa: ANN202
        metrics.inc("upstream_errors_total")
        return err(502, str(exc), type_="upstream_error")

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError):  # noqa: ANN202
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        field = ".".join(loc) or None
        return err(422, f"{field or 'body'}: {first.get('msg', 'invalid request')}", param=field)

    class Guard:
        """API key and body-size checks as a plain ASGI middleware (Starlette's
        ``@app.middleware("http")`` would copy every streamed chunk through a memory stream)."""

        def __init__(self, inner) -> None:  # noqa: ANN001
            self.inner = inner

        async def __call__(self, scope, receive, send):  # noqa: ANN001, ANN204
            if scope["type"] == "http" and scope["path"].startswith("/v1/"):
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
                problem = None
                if settings.api_key:
                    auth = headers.get("authorization", "")
                    token = auth[7:] if auth.lower().startswith("bearer ") else ""
                    if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
                        problem = err(401, "invalid or missing API key", type_="authentication_error")
                size = headers.get("content-length")
                if problem is None and size is not None and size.isdigit() and int(size) > settings.max_body_bytes:
                    problem = err(413, f"request body of {size} bytes exceeds the limit of {settings.max_body_bytes}")
                if problem is not None:
                    await problem(scope, receive, send)
                    return
            await self.inner(scope, receive, send)

    app.add_middleware(Guard)

    @app.get("/health")
    async def health():  # noqa: ANN202
        return {"status": "ok", "backend": model_name, "policies": sorted(policies)}

    @app.get("/metrics")
    async def _metrics():  # noqa: ANN202
        lines = []
        for key, m in sorted(monitors.items()):
            lab = f'{{policy="{key}"}}'
            lines += [
                f"stopwise_drift_requests{lab} {m.n}",
                f"stopwise_drift_disagreement_rate{lab} {m.mean if m.n else 0:g}",
                f"stopwise_drift_disagreement_lower{lab} {m.lower:g}",
                f"stopwise_drift_disagreement_upper{lab} {m.upper:g}",
                f"stopwise_drift_epsilon{lab} {m.epsilon:g}",
                f"stopwise_drift_alarm{lab} {int(m.alarm)}",
            ]
        live = getattr(be, "live_streams", None)
        if live is not None:
            lines.append(f"stopwise_backend_live_generations {live}")
        return PlainTextResponse(metrics.render() + ("\n".join(lines) + "\n" if lines else ""))

    @app.get("/v1/models")
    async def models():  # noqa: ANN202
        return P.models_list([model_name])

    def pick_policy(req: P._Common) -> LoadedPolicy | None:
        ctl = req.stopwise
        name = ctl.policy if ctl and ctl.policy else (next(iter(policies)) if len(policies) == 1 else None)
        if name in (None, "off"):
            if name is None and len(policies) > 1:
                raise ConfigError(f"several policies are loaded; choose one in stopwise.policy: {', '.join(sorted(policies))} or off", hint="stopwise.policy")
            return None
        if name not in policies:
            raise ConfigError(f"stopwise.policy '{name}' is not loaded; loaded: {', '.join(sorted(policies)) or 'none'} (or 'off')")
        cands = policies[name]
        if ctl and ctl.epsilon is not None:
            match = [p for p in cands if abs(p.epsilon - ctl.epsilon) < 1e-12]
            if not match:
                raise ConfigError(f"stopwise.epsilon {ctl.epsilon} is not certified for policy '{name}'; certified: {sorted(p.epsilon for p in cands)}")
            return match[0]
        return min(cands, key=lambda p: p.epsilon)

    def scope_problems(lp: LoadedPolicy, sampling: Sampling, forcing: str) -> list[str]:
        cond = lp.conditions
        out = []
        want = (cond.get("sampling") or {}).get("temperature")
        if want is not None and abs(float(want) - sampling.temperature) > 1e-9:
            out.append(f"temperature {sampling.temperature} (certified at {want})")
        want_p = (cond.get("sampling") or {}).get("top_p")
        if want_p is not None and abs(float(want_p) - sampling.top_p) > 1e-9:
            out.append(f"top_p {sampling.top_p} (certified at {want_p})")
        info = be.model_info() or {}
        sha, have = cond.get("model_sha256"), info.get("model_sha256")
        if sha and have and sha != have:
            out.append(f"model sha256 {have[:12]} (certified for {sha[:12]})")
        elif sha and not have:
            out.append(f"model of unknown sha256 (certified for {sha[:12]})")
        elif not sha and cond.get("model") and cond.get("model") != info.get("model"):
            out.append(f"model '{info.get('model')}' (certified for '{cond.get('model')}')")
        if cond.get("forcing_string") is not None and probe_kind(lp.doc) == "forced" and cond.get("forcing_string") != forcing:
            out.append("another forcing string")
        return out

    async def serve(req: P._Common, prompt: str, chat: bool):  # noqa: ANN202
        t0 = time.monotonic()
        rid = P.new_id("chatcmpl" if chat else "cmpl")
        max_new = req.max_new(settings.default_max_tokens)
        if max_new > settings.max_tokens_limit:
            return err(400, f"max_tokens {max_new} exceeds the server's limit of {settings.max_tokens_limit}", param="max_tokens")
        stop = tuple([req.stop] if isinstance(req.stop, str) else (req.stop or []))
        lp = pick_policy(req)
        temp = req.temperature if req.temperature is not None else float(((lp.conditions.get("sampling") or {}).get("temperature", 0.7)) if lp else 0.7)
        top_p = req.top_p if req.top_p is not None else float(((lp.conditions.get("sampling") or {}).get("top_p", 0.95)) if lp else 0.95)
        sampling = Sampling(temperature=temp, top_p=top_p, top_k=40, max_tokens=max_new, seed=req.seed, stop=stop)
        if settings.log_prompts:
            log.info("request %s prompt %r", rid, prompt[:2000])
        extra = set(req.model_extra or {})
        if extra:
            log.info("request %s: ignored fields %s", rid, sorted(extra))
        if gate.locked():
            metrics.inc("requests_rejected_total")
            return err(429, f"the server is serving {settings.max_concurrent} requests; retry shortly", type_="rate_limit_error", headers={"Retry-After": "1"})
        metrics.inc("requests_total", route="chat" if chat else "completions")
        n_prompt = (be.count_prompt_tokens(prompt) if hasattr(be, "count_prompt_tokens") else None) or 0
        out = ReasoningOutput(await get_profile(), chat=chat, inline=settings.reasoning_format == "inline")
        if lp is None:
            return await passthrough(rid, prompt, sampling, chat, req.stream, t0, n_prompt, out)
        problems = scope_problems(lp, sampling, forcing_of(out.profile)[0])
        if problems and settings.uncertified == "refuse":
            metrics.inc("requests_uncertified_refused_total")
            return err(400, f"request is outside the certified conditions of policy '{lp.name}': {'; '.join(problems)}", param="stopwise")
        return await with_policy(rid, prompt, sampling, chat, req.stream, lp, problems, t0, n_prompt, out)

    def chunks_of(rid: str, chat: bool):  # noqa: ANN202
        """field -> pre-serialized chunk template of one response (content, and reasoning_content for chat)."""
        tmpl = {"content": P.ChunkTemplate(rid, model_name, chat)}
        tmpl["reasoning_content"] = P.ChunkTemplate(rid, model_name, True, reasoning=True) if chat else tmpl["content"]
        return tmpl

    def token_events(tmpl, out: ReasoningOutput, text: str):  # noqa: ANN001, ANN202
        """One token's SSE events: its pieces, or one empty delta (a client counts one chunk a token)."""
        pieces = out.feed(text)
        if not pieces:
            return [tmpl["content" if out.answered or not out.split else "reasoning_content"].sse("")]
        return [tmpl[field].sse(piece) for field, piece in pieces]

    def joined(out: ReasoningOutput, texts) -> tuple[str, str | None]:  # noqa: ANN001
        """Whole texts fed token by token: (content, reasoning or None)."""
        parts: dict[str, list[str]] = {"content": [], "reasoning_content": []}
        for t in texts:
            for field, piece in out.feed(t):
                parts[field].append(piece)
        for field, piece in out.flush():
            parts[field].append(piece)
        return "".join(parts["content"]), ("".join(parts["reasoning_content"]) if out.split else None)

    def final_usage(chat: bool, n_prompt: int, completion: int, out: ReasoningOutput, acc: dict[str, Any]) -> dict[str, Any]:
        return P.usage(n_prompt, completion, reasoning_tokens=out.reasoning_tokens if chat and out.profile is not None else None, accounting=acc)

    async def passthrough(rid, prompt, sampling, chat, stream, t0, n_prompt, out):  # noqa: ANN001, ANN202
        sw = {"policy": "off", "certified": False, "chains": 1}
        if stream:
            async def gen():  # noqa: ANN202
                n = 0
                async with gate:
                    agen = be.stream(prompt, sampling, logprobs=False)
                    tmpl = chunks_of(rid, chat)
                    try:
                        if chat:
                            yield _sse(P.chat_chunk(rid, model_name, None, role=True))
                        async for st in agen:
                            n += 1
                            for ev in token_events(tmpl, out, st.text):
                                yield ev
                        for field, piece in out.flush():
                            yield tmpl[field].sse(piece)
                        finish = "length" if n >= sampling.max_tokens else "stop"
                        fin = {"stopwise": {**sw, "tokens": n}, "usage": final_usage(chat, n_prompt, n, out, P.accounting(n))}
                        yield _sse(P.chat_chunk(rid, model_name, None, finish, extra=fin) if chat else P.completion_chunk(rid, model_name, "", finish, extra=fin))
                        yield "data: [DONE]\n\n"
                    except StopwiseError as exc:
                        yield _sse(P.error_body(str(exc), type_="upstream_error"))
                    finally:
                        await agen.aclose()
                        metrics.inc("tokens_generated_total", n)
                        metrics.observe(time.monotonic() - t0)

            return StreamingResponse(gen(), media_type="text/event-stream")
        async with gate:
            steps = [st async for st in be.stream(prompt, sampling, logprobs=False)]
        content, reasoning = joined(out, (s.text for s in steps))
        finish = "length" if len(steps) >= sampling.max_tokens else "stop"
        metrics.inc("tokens_generated_total", len(steps))
        metrics.observe(time.monotonic() - t0)
        acc = P.accounting(len(steps))
        use = final_usage(chat, n_prompt, len(steps), out, acc)
        sw = {**sw, "tokens": len(steps)}
        body = (P.chat_response if chat else P.completion_response)(rid, model_name, content, finish, use, sw, reasoning)
        return JSONResponse(body, headers=P.accounting_headers(acc))

    async def with_policy(rid, prompt, sampling, chat, stream, lp, problems, t0, n_prompt, out):  # noqa: ANN001, ANN202
        classes = AnswerClasses()
        base_seed = sampling.seed if sampling.seed is not None else int(time.time_ns() % (2**31))
        text_probes = probe_kind(lp.doc) == "text"
        forcing, suffix = forcing_of(out.profile)

        async def open_chain(i: int):  # noqa: ANN202
            s = dataclasses.replace(sampling, seed=base_seed + i)
            if text_probes:  # calibrated on answers read from the text: read them live the same way
                return TextProbeChain(be, prompt, s)
            return await be.open_chain(prompt, s, schedule, forcing, settings.probe_max_tokens)

        n_chains = settings.max_chains if lp.family.kind == "multi" else 1
        live_tokens: asyncio.Queue | None = asyncio.Queue() if stream and n_chains == 1 else None
        on_token = (lambda c, st: live_tokens.put_nowait(st.text)) if live_tokens is not None else None
        drv = LiveDriver(open_chain, classes, max_chains=n_chains, family_name=lp.name, on_token=on_token)

        async def decide():  # noqa: ANN202
            async with gate:
                res = await drv.run(lp.family.make(lp.index, n_chains=n_chains))
                raw, finish, forced_cost = await render_decision(res, classes, forcing, suffix)
            if settings.drift_share > 0 and rng.random() < settings.drift_share:
                task = asyncio.create_task(shadow(lp, open_chain, classes, n_chains, res))
                shadows.add(task)
                task.add_done_callback(shadows.discard)
            return res, raw, finish, forced_cost

        if live_tokens is not None:
            # one chain: the policy is committed to it from the start, so its tokens stream
            # as they are delivered; the forced answer (if it stopped early) comes at the end
            return StreamingResponse(stream_single(rid, chat, lp, problems, t0, decide, live_tokens, classes, n_prompt, prompt, sampling, out),
                                     media_type="text/event-stream")
        res, raw, finish, forced_cost = await decide()
        esc_tokens = 0
        if esc is not None and (res.abstained or res.escalated):
            raw, finish, esc_tokens = await escalate(prompt, sampling)
        sw = policy_object(lp, problems, res, forced_cost, classes, esc_tokens)
        acc = account(res, forced_cost, t0, esc_tokens, sw["full_compute_tokens_estimate"])
        use = final_usage(chat, n_prompt, res.generated + esc_tokens, out, acc)
        if res.abstained or res.escalated:
            content, reasoning = raw, None
        else:
            content, reasoning = joined(out, [raw])
            if out.profile is not None and chat:  # the thinking's tokens: the delivered ones before the answer began
                use["completion_tokens_details"]["reasoning_tokens"] = reasoning_count(res, out)
        if stream:
            async def gen():  # noqa: ANN202
                fin = {"stopwise": sw, "usage": use}
                if chat:
                    yield _sse(P.chat_chunk(rid, model_name, None, role=True))
                    if reasoning:
                        yield _sse(P.chat_chunk(rid, model_name, None, reasoning=reasoning))
                    yield _sse(P.chat_chunk(rid, model_name, content))
                    yield _sse(P.chat_chunk(rid, model_name, None, finish, extra=fin))
                else:
                    yield _sse(P.completion_chunk(rid, model_name, content))
                    yield _sse(P.completion_chunk(rid, model_name, "", finish, extra=fin))
                yield "data: [DONE]\n\n"

            return StreamingResponse(gen(), media_type="text/event-stream", headers={"x-stopwise-policy": lp.name})
        body = (P.chat_response if chat else P.completion_response)(rid, model_name, content, finish, use, sw, reasoning)
        return JSONResponse(body, headers=P.accounting_headers(acc))

    def reasoning_count(res, out: ReasoningOutput) -> int:  # noqa: ANN001
        """Tokens of the answering chain delivered before its answer began (its thinking)."""
        c = next((c for c, h in enumerate(res.handles) if c in res.returned or h.finish_reason in ("stop", "length")), None)
        if c is None or out.profile is None:
            return 0
        count = ReasoningOutput(out.profile, chat=True, inline=False)
        for st in getattr(res.handles[c], "steps", [])[: res.positions[c]]:
            count.feed(st.text)
        return count.reasoning_tokens

    async def stream_single(rid, chat, lp, problems, t0, decide, q, classes, n_prompt, prompt, sampling, out):  # noqa: ANN001, ANN202
        task = asyncio.create_task(decide())
        sent = []
        tmpl = chunks_of(rid, chat)
        try:
            if chat:
                yield _sse(P.chat_chunk(rid, model_name, None, role=True))
            while True:
                getter = asyncio.ensure_future(q.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    text = getter.result()
                    sent.append(text)
                    for ev in token_events(tmpl, out, text):
                        yield ev
                    continue
                getter.cancel()
                while not q.empty():
                    text = q.get_nowait()
                    sent.append(text)
                    for ev in token_events(tmpl, out, text):
                        yield ev
                break
            try:
                res, raw, finish, forced_cost = task.result()
            except StopwiseError as exc:
                yield _sse(P.error_body(str(exc), type_="upstream_error"))
                return
            streamed = "".join(sent)
            rest = raw[len(streamed):] if raw.startswith(streamed) else ""
            esc_tokens = 0
            if esc is not None and (res.abstained or res.escalated):
                try:
                    raw, finish, esc_tokens = await escalate(prompt, sampling)
                except StopwiseError as exc:
                    yield _sse(P.error_body(str(exc), type_="upstream_error"))
                    return
            if res.abstained or res.escalated:
                for field, piece in out.flush():
                    yield tmpl[field].sse(piece)
                # the tokens already streamed stay; then the message, or the larger model's answer
                yield tmpl["content"].sse("\n\n" + raw)
            else:
                if rest:
                    for field, piece in out.feed(rest):
                        yield tmpl[field].sse(piece)
                for field, piece in out.flush():
                    yield tmpl[field].sse(piece)
            sw = policy_object(lp, problems, res, forced_cost, classes, esc_tokens)
            acc = account(res, forced_cost, t0, esc_tokens, sw["full_compute_tokens_estimate"])
            fin = {"stopwise": sw, "usage": final_usage(chat, n_prompt, res.generated + esc_tokens, out, acc)}
            yield _sse(P.chat_chunk(rid, model_name, None, finish, extra=fin) if chat else P.completion_chunk(rid, model_name, "", finish, extra=fin))
            yield "data: [DONE]\n\n"
        finally:
            if not task.done():
                # the client went away: stop the policy, which cancels its chains upstream
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def escalate(prompt: str, sampling: Sampling) -> tuple[str, str, int]:
        """The escalation backend's full-compute answer to the same prompt: (text, finish reason, tokens)."""
        async with gate:
            steps = [st async for st in esc.stream(prompt, sampling, logprobs=False)]
        finish = "length" if len(steps) >= sampling.max_tokens else "stop"
        return "".join(st.text for st in steps), finish, len(steps)

    def account(out, forced_cost, t0, esc_tokens: int = 0, full_tokens: int | None = None) -> dict[str, Any]:  # noqa: ANN001
        """Count one decided request in the metrics; its accounting for usage and headers."""
        acc = P.accounting(out.generated + esc_tokens, out.probe_tokens + forced_cost, full_tokens)
        if full_tokens is not None:
            metrics.inc("tokens_saved_estimate_total", acc["saved_tokens_estimate"])
        if esc_tokens:
            metrics.inc("escalations_total")
            metrics.inc("escalation_tokens_total", esc_tokens)
        metrics.inc("tokens_generated_total", out.generated)
        metrics.inc("probe_tokens_total", out.probe_tokens + forced_cost)
        metrics.inc("chains_stopped_early_total", len(out.stopped_early))
        if out.abstained and not esc_tokens:
            metrics.inc("abstentions_total")
        metrics.observe(time.monotonic() - t0)
        return acc

    def full_estimate(lp, out, n_chains: int) -> int | None:  # noqa: ANN001
        """Tokens full compute would have generated for this request, estimated from the policy file's
        calibration traffic: a chain stopped at p would have run E[L | L > p]; an undrawn chain E[L]."""
        q = ((lp.doc.get("full_compute") or {}).get("chain_length_quantiles")) or []
        if not q:
            return None
        lengths = np.asarray(q, dtype=float)
        total = float(out.generated)
        for c in out.stopped_early:
            p = out.positions[c] if c < len(out.positions) else 0
            longer = lengths[lengths > p]
            total += (float(longer.mean()) - p) if len(longer) else 0.0
        per_q = (lp.doc.get("full_compute") or {}).get("chains_per_question") or 1
        full_chains = min(n_chains, int(per_q)) if lp.family.kind == "multi" else 1
        total += max(0, full_chains - out.chains) * float(lengths.mean())
        return int(round(total))

    def policy_object(lp, problems, out, forced_cost, classes, esc_tokens: int = 0):  # noqa: ANN001, ANN202
        escalated = bool(esc_tokens) or (esc is not None and (out.abstained or out.escalated))
        n_chains = settings.max_chains if lp.family.kind == "multi" else 1
        est = full_estimate(lp, out, n_chains)
        return {
            "full_compute_tokens_estimate": est,
            "answered_by": esc_name if escalated else model_name,
            "escalation_tokens": esc_tokens,
            **lp.summary(),
            "certified": not problems,
            "uncertified_reasons": problems or None,
            "chains": out.chains,
            "tokens": out.tokens,
            "generated_tokens": out.generated,
            "probe_tokens": out.probe_tokens + forced_cost,
            "stopped_early": len(out.stopped_early),
            "abstained": out.abstained and not escalated,
            "escalated": out.escalated or escalated,
            "answer": classes.text(out.answer) if out.answer >= 0 else None,
        }

    async def shadow(lp, open_chain, classes, n_chains, out):  # noqa: ANN001, ANN202
        """Full compute with the same seeds (the same chains, run to their end); one loss for the monitor."""
        from stopwise.policies.full import FullCompute

        key = f"{lp.name}@{lp.epsilon:g}"
        try:
            async with gate:
                full = await LiveDriver(open_chain, classes, max_chains=n_chains, family_name="full").run(FullCompute(n_chains))
        except StopwiseError as exc:
            log.warning("drift shadow for %s failed: %s", key, exc)
            return
        m = monitors.setdefault(key, RiskMonitor(epsilon=lp.epsilon, alpha=settings.drift_alpha))
        was = m.alarm
        m.update(float(out.abstained or out.answer < 0 or out.answer != full.answer))
        metrics.inc("drift_shadow_tokens_total", full.generated)
        if m.alarm and not was:
            log.warning(
                "drift: live disagreement of %s is above its certified epsilon %.3g (rate %.3f, anytime lower bound %.3f over %d requests); recalibrate on recent traffic",
                key, m.epsilon, m.mean, m.lower, m.n,
            )

    async def render_decision(out, classes: AnswerClasses, forcing: str, suffix: str) -> tuple[str, str, int]:  # noqa: ANN001
        """The decision as the model's raw text (thinking, markers, answer), its finish reason and forcing cost."""
        if out.abstained:
            return settings.abstain_message, "abstain", 0
        if out.escalated:
            return settings.abstain_message, "escalate", 0
        # the first chain whose answer is the decision; a chain stopped early gets the
        # answer written after its text with the forcing string: forced there by the model,
        # or (text-derived probes) the answer the chain had already stated, with no request
        profile = resolved.get("profile")
        for c, h in enumerate(out.handles):
            cls = out.returned.get(c)
            if cls is None:
                cls = h.answer_class()
                if cls is None:
                    from stopwise.answers import extract_answer

                    cls = classes.classify(extract_answer(h.text))
            if cls != out.answer:
                continue
            if c not in out.returned:
                return h.prefix_text(out.positions[c]), h.finish_reason if h.finish_reason in ("stop", "length") else "stop", 0
            prefix = h.prefix_text(out.positions[c])
            close = getattr(profile, "think_close", None)
            force = forcing.replace(close, "", 1) if close and close in prefix and close in forcing else forcing
            if h.probes_free:
                return prefix + force + (classes.text(out.answer) or "") + suffix, "stop", 0
            try:
                pr = await h.probe((out.positions[c], "final"))
                ans = forced_answer(pr.text or "") or classes.text(out.answer) or ""
                return prefix + force + ans + suffix, "stop", int(pr.cost)
            except (BackendError, TypeError, ValueError):
                return prefix + force + (classes.text(out.answer) or "") + suffix, "stop", 0
        return classes.text(out.answer) or "", "stop", 0

    @app.post("/v1/chat/completions")
    async def chat_completions(req: P.ChatCompletionRequest):  # noqa: ANN202
        await get_profile()  # before rendering: it may fetch the upstream's chat template
        prompt = be.render_chat([{"role": m.role, "content": m.content or ""} for m in req.messages])
        return await serve(req, prompt, True)

    @app.post("/v1/completions")
    async def completions(req: P.CompletionRequest):  # noqa: ANN202
        return await serve(req, req.prompt, False)

    return app


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"
