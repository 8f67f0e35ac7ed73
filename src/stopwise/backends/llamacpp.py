"""The embedded backend: :class:`~stopwise.backends.llama_engine.BatchEngine` (llama.cpp in-process, batched)
on one worker thread behind the async :class:`~stopwise.backends.base.Backend` interface.

Streams, probes and cancellation reach the engine as commands the worker runs between steps; its events come back
to per-chain asyncio queues. ``llama_cpp`` is imported lazily (extra ``[embedded]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from stopwise.backends.base import (
    LOGPROB_CONVENTION,
    Backend,
    Capabilities,
    ChainHandle,
    ProbeOutcome,
    ProbeResult,
    Sampling,
    ScheduledChainHandle,
    TokenStep,
)
from stopwise.backends.chat import chat_template, render_chat_template  # noqa: F401 - re-exported
from stopwise.backends.llama_engine import (
    TOP_N,
    BatchEngine,
    SlotsFull,
)
from stopwise.errors import BackendError


def _resolve(fut: asyncio.Future, value: Any) -> None:
    if fut.done():
        return
    if isinstance(value, BaseException):
        fut.set_exception(value)
    else:
        fut.set_result(value)


class _EmbeddedChain(ScheduledChainHandle):
    """A live chain on the embedded engine: tokens from its queue, probes on the engine."""

    def __init__(self, be: EmbeddedBackend, cid: int, q: asyncio.Queue, sampling: Sampling, schedule: Any, forcing_ids: list[int], max_new: int) -> None:
        self.be, self.cid, self.q = be, cid, q
        self.sampling, self.schedule = sampling, schedule
        self.forcing_ids, self.max_new = forcing_ids, max_new
        self.steps: list[TokenStep] = []
        self._done = False

    async def next(self) -> TokenStep | None:
        if self._done:
            return None
        ev = await self.q.get()
        if isinstance(ev, Exception):
            raise ev
        if ev.kind == "finished":
            self._done = True
            self.finish_reason = ev.finish_reason
            return None
        self.steps.append(ev.step)
        return ev.step

    async def probe(self, key: Any) -> ProbeOutcome:
        position, cue = key
        res = await self.be._probe(self.cid, position, cue, self.forcing_ids, self.max_new)
        return ProbeOutcome(res.text, res.logprob, res.cost, cue)

    async def cancel(self) -> None:
        if not self._done:
            self._done = True
            self.finish_reason = "cancelled"
            self.be._call(lambda: self.be.engine.cancel(self.cid))
            with self.be._futs_lock:
                orphans = [self.be._probe_futs.pop(k) for k in list(self.be._probe_futs) if k[0] == self.cid]
            for fut in orphans:
                _resolve(fut, BackendError(f"chain {self.cid} was cancelled before its probe ended"))

    @property
    def text(self) -> str:
        return b"".join(s.raw or b"" for s in self.steps).decode("utf-8", errors="replace")


class EmbeddedBackend(Backend):
    """The async backend over a :class:`BatchEngine` driven by one worker thread.

    Parameters
    ----------
    model : str
        ``embedded`` (Qwen2.5-Coder-0.5B-Instruct), ``embedded-1.5b``, ``smollm2`` or a GGUF path.
    n_ctx_seq, n_seq_max, n_threads :
        Passed to :class:`BatchEngine`.
    admission_timeout : float
        Seconds a request waits in line for free sequence slots before it fails
        (retryable); chains end within their ``max_tokens``, so slots do free up.
    """

    capabilities = Capabilities(
        logprobs=True,
        top_k=TOP_N,
        entropy=True,
        prefix_continuation=True,
        batched_chains=True,
        hidden_states=False,
        token_ids=True,
    )

    def __init__(self, model: str = "embedded", *, n_ctx_seq: int = 2048, n_seq_max: int = 32, n_threads: int | None = None,
                 admission_timeout: float = 600.0):
        from stopwise.models import resolve_model

        self.resolved = resolve_model(model)
        self.name = self.resolved.name
        self.engine = BatchEngine(str(self.resolved.path), n_ctx_seq=n_ctx_seq, n_seq_max=n_seq_max, n_threads=n_threads)
        self._template = chat_template(self.engine.metadata)
        self._lock = threading.Condition()
        self._queues: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._commands: list[Callable[[], None]] = []
        self._probe_futs: dict[tuple[int, int, str], asyncio.Future] = {}
        self._futs_lock = threading.Lock()  # the worker thread resolves, the event loop registers and cancels
        self._closed = False
        self.admission_timeout = float(admission_timeout)
        self._admission: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._thread = threading.Thread(target=self._run, name="stopwise-llamacpp", daemon=True)
        self._thread.start()

    def model_info(self) -> dict[str, Any]:
        return {
            "model": self.resolved.title,
            "model_file": self.resolved.path.name,
            "model_sha256": self.resolved.sha256,
            "tokenizer": self.engine.metadata.get("tokenizer.ggml.pre") or self.engine.metadata.get("tokenizer.ggml.model"),
            "chat_template": self._template,
            "logprob_convention": LOGPROB_CONVENTION,
            "backend": "llama.cpp (embedded, batched)",
        }

    def count_prompt_tokens(self, prompt: str) -> int | None:
        return len(self.engine.tokenize_prompt(prompt))

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        if not self._template:
            return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return render_chat_template(self._template, messages)

    # the worker thread owns the engine
    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not self._commands and self.engine.n_active == 0 and not self.engine._probes:
                    self._lock.wait()
                if self._closed:
                    return
                cmds, self._commands = self._commands, []
            for cmd in cmds:
                cmd()
            try:
                events = self.engine.step()
            except Exception as exc:  # noqa: BLE001 - handed to every waiter; the thread must live on
                err = exc if isinstance(exc, BackendError) else BackendError(
                    f"the embedded engine failed: {type(exc).__name__}: {exc}", retryable=False)
                for loop, q in list(self._queues.values()):
                    loop.call_soon_threadsafe(q.put_nowait, err)
                with self._futs_lock:
                    futs, self._probe_futs = list(self._probe_futs.values()), {}
                for fut in futs:
                    fut.get_loop().call_soon_threadsafe(_resolve, fut, err)
                if not isinstance(exc, BackendError):  # not a decode failure: nothing in flight can go on
                    for cid in list(self.engine._chains):
                        self.engine.cancel(cid)
                continue
            for ev in events:
                if ev.kind == "probe":
                    with self._futs_lock:
                        fut = self._probe_futs.pop((ev.chain, ev.probe.position, ev.probe.cue), None)
                    if fut is not None:
                        fut.get_loop().call_soon_threadsafe(_resolve, fut, ev.probe)
                    continue
                target = self._queues.get(ev.chain)
                if target is not None:
                    loop, q = target
                    loop.call_soon_threadsafe(q.put_nowait, ev)
                if ev.kind == "finished":
                    self._queues.pop(ev.chain, None)

    def _call(self, fn: Callable[[], Any]) -> None:
        with self._lock:
            self._commands.append(fn)
            self._lock.notify()

    async def _submit(self, prompt: str, samplings: Sequence[Sampling]) -> tuple[list[int], asyncio.Queue]:
        return await self._submit_ids(self.engine.tokenize_prompt(prompt), samplings)

    async def _submit_ids(self, ids: list[int], samplings: Sequence[Sampling] | Sampling) -> tuple[list[int], asyncio.Queue]:
        """Start chains on ``ids``; when every sequence slot is taken, wait in line (first come, first
        served) for running chains to finish, up to ``admission_timeout`` seconds."""
        samplings = [samplings] if isinstance(samplings, Sampling) else list(samplings)
        loop = asyncio.get_running_loop()
        if self._admission is None or self._admission[0] is not loop:
            self._admission = (loop, asyncio.Lock())
        deadline = loop.time() + self.admission_timeout
        async with self._admission[1]:
            while True:
                try:
                    return await self._try_submit(ids, samplings)
                except SlotsFull as exc:
                    if len(samplings) > self.engine.n_seq_max:
                        raise  # more chains than there are slots: waiting cannot help
                    if loop.time() >= deadline:
                        raise BackendError(f"{exc.message} (waited {self.admission_timeout:g} s)", retryable=True, hint=exc.hint) from exc
                    await asyncio.sleep(0.02)

    async def _try_submit(self, ids: list[int], samplings: list[Sampling]) -> tuple[list[int], asyncio.Queue]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        q: asyncio.Queue = asyncio.Queue()

        def cmd() -> None:
            try:
                cids = self.engine.submit(ids, samplings)
                for cid in cids:
                    self._queues[cid] = (loop, q)
                loop.call_soon_threadsafe(fut.set_result, cids)
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                loop.call_soon_threadsafe(fut.set_exception, exc)

        self._call(cmd)
        return await fut, q

    async def _steps(self, cid: int, q: asyncio.Queue) -> AsyncIterator[TokenStep]:
        """The tokens of chain ``cid`` until it finishes; closed early, it cancels the chain."""
        finished = False
        try:
            while True:
                ev = await q.get()
                if isinstance(ev, Exception):
                    raise ev
                if ev.kind == "token":
                    yield ev.step
                elif ev.kind == "finished":
                    finished = True
                    return
        finally:
            if not finished:
                self._call(lambda: self.engine.cancel(cid))

    async def stream(self, prompt: str, sampling: Sampling, *, logprobs: bool = True) -> AsyncIterator[TokenStep]:
        (cid,), q = await self._submit(prompt, [sampling])
        async with contextlib.aclosing(self._steps(cid, q)) as steps:
            async for st in steps:
                yield st

    async def continue_prefix(self, prompt: str, prefix: Sequence[TokenStep], forcing: str, max_tokens: int):
        ids = self.engine.tokenize_prompt(prompt)
        if all(s.token_id is not None for s in prefix):
            ids += [int(s.token_id) for s in prefix]  # the exact prefix, never re-tokenized
        else:
            ids += self.engine.tokenize("".join(s.text for s in prefix), special=False)
        ids += self.engine.tokenize(forcing, special=True)
        from stopwise.backends.probes import forced_answer_done

        greedy = Sampling(temperature=0.0, max_tokens=max_tokens, seed=0)
        (cid,), q = await self._submit_ids(ids, greedy)
        text = bytearray()
        lp = 0.0
        n = 0
        async with contextlib.aclosing(self._steps(cid, q)) as steps:
            async for st in steps:
                text.extend(st.raw or b"")
                lp += st.logprob
                n += 1
                # up to the answer's end, as the chains' own probes decode (request_probe's stop)
                if forced_answer_done(text.decode("utf-8", errors="replace")):
                    break
        return text.decode("utf-8", errors="replace"), lp, len(ids), n

    async def open_chain(self, prompt: str, sampling: Sampling, schedule: Any, forcing: str, probe_max_tokens: int = 16) -> ChainHandle:
        """A chain whose probes copy its KV cells (no prefix re-prefill) while it keeps decoding."""
        (cid,), q = await self._submit(prompt, [sampling])
        return _EmbeddedChain(self, cid, q, sampling, schedule, self.engine.tokenize(forcing), probe_max_tokens)

    async def _probe(self, cid: int, position: int, cue: str, forcing_ids: list[int], max_new: int) -> ProbeResult:
        from stopwise.backends.probes import forced_answer_done

        fut = asyncio.get_running_loop().create_future()
        with self._futs_lock:
            self._probe_futs[(cid, position, cue)] = fut

        def cmd() -> None:
            try:
                self.engine.request_probe(cid, forcing_ids, max_new, cue=cue, stop=forced_answer_done, position=position)
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                with self._futs_lock:
                    self._probe_futs.pop((cid, position, cue), None)
                fut.get_loop().call_soon_threadsafe(_resolve, fut, exc)

        self._call(cmd)
        return await fut

    async def aclose(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self.engine.close()
