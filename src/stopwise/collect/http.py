"""Collection through an OpenAI-compatible server."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stopwise.backends.base import Sampling
from stopwise.backends.probes import forced_answer
from stopwise.collect.chains import (
    CollectConfig,
    ProgressFn,
    _Live,
    _record,
    chain_seed,
)
from stopwise.collect.state import _RunLog, _write_chunk
from stopwise.datasets import Dataset, DatasetItem


def is_http(model: str) -> bool:
    return model.startswith(("http://", "https://"))


@dataclass
class _HttpModel:
    """What provenance records for an HTTP upstream (no file, no sha256)."""

    url: str

    @property
    def title(self) -> str:
        return f"OpenAI-compatible server at {self.url}"

    sha256 = None


def text_derived_probes(lc: _Live) -> list[tuple[int, str | None, float, int, str]]:
    """A chat chain's probes: at each cue, the answer it had stated (as the bundled R1/QwQ sets'),
    at token positions counted as the chain arrived (one token a logprob entry or stream chunk)."""
    import math

    from stopwise.traces.textprobes import text_probes
    from stopwise.traces.tokenize import TokenizedText

    ends, acc = [], 0
    for piece in lc.tokens:
        acc += len(piece)
        ends.append(acc)
    p = text_probes("".join(lc.tokens), TokenizedText(ends))
    return [(pos, ans, math.nan, 0, cue) for pos, ans, cue in zip(p["probe_position"], p["probe_answer"], p["probe_cue"])]


async def _collect_http(
    cfg: CollectConfig,
    state: Path,
    ds: Dataset,
    todo: list[tuple[DatasetItem, list[int]]],
    n_done0: int,
    total: int,
    n_questions: int,
    progress: ProgressFn | None,
    stop_after_chains: int | None,
) -> bool:
    """Collect through an OpenAI-compatible server: chains as parallel streams, probes as
    side requests that continue the chain's prefix (the server's prefix cache, if any,
    makes them cheap). Entropy is not available over HTTP; token confidence is computed
    from the top logprobs the server returns.

    A chat-only upstream (``cfg.api == "chat"``) cannot continue a prefix: its chains get
    text-derived probes instead (:func:`text_derived_probes`), and logprobs are kept where
    it returns them."""
    import asyncio

    from stopwise.backends.openai_compat import OpenAICompatBackend

    chat = cfg.api == "chat"
    if chat:
        from stopwise.backends.openai_chat import OpenAIChatBackend
        from stopwise.backends.profiles import detect_profile

        be = OpenAIChatBackend(cfg.model, top_logprobs=max(cfg.top_k, 1))
        be.profile = detect_profile(await be.model_id(), override=cfg.profile)
    else:
        be = OpenAICompatBackend(cfg.model, top_logprobs=max(cfg.top_k, 1))
        await be.fetch_chat_template()
    sem = asyncio.Semaphore(cfg.batch_chains)
    buffer: list[dict[str, Any]] = []
    counters = {"new": 0, "tokens": 0}
    q_left: dict[str, int] = {}
    for it, m in todo:
        q_left[it.question_id] = q_left.get(it.question_id, 0) + len(m)
    t0 = time.monotonic()
    last_flush = [t0]
    run = _RunLog(state, None)
    stop = asyncio.Event()

    async def probe(prompt: str, prefix: list[Any], pos: int, cue: str) -> tuple[int, str | None, float, int, str]:
        text, lp, prefill, dec = await be.continue_prefix(prompt, prefix, cfg.forcing, cfg.probe_max_tokens)
        return (pos, forced_answer(text), lp, prefill + dec, cue)

    async def chain(it: DatasetItem, sid: int) -> None:
        async with sem:
            if stop.is_set():
                return
            prompt = be.render_chat([{"role": "system", "content": ds.system_prompt}, {"role": "user", "content": it.question}])
            seed = chain_seed(cfg.seed, it.question_id, sid)
            smp = Sampling(cfg.temperature, cfg.top_p, cfg.sampler_top_k, cfg.max_tokens, seed)
            lc = _Live(it, sid, seed, [], [], [], [], [], [], [], [], set())
            steps: list[Any] = []
            tasks: list[asyncio.Task] = []
            try:
                async for st in be.stream(prompt, smp, require_logprobs=not chat):
                    steps.append(st)
                    counters["tokens"] += 1
                    for pos, cue in lc.add(st, cfg):
                        if not chat:
                            tasks.append(asyncio.create_task(probe(prompt, steps[:pos], pos, cue)))
                lc.probes = text_derived_probes(lc) if chat else list(await asyncio.gather(*tasks))
            finally:  # a failed stream or probe: this chain's other probes stop too
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            lc.finish = "length" if len(lc.tokens) >= cfg.max_tokens else "stop"
            lc.entropy = None  # type: ignore[assignment]
            buffer.append(_record(lc, cfg))
            counters["new"] += 1
            q_left[it.question_id] -= 1
            now = time.monotonic()
            if len(buffer) >= cfg.flush_every or now - last_flush[0] > 60:
                _write_chunk(state / "chunks", buffer[:])
                buffer.clear()
                last_flush[0] = now
                run.record(counters["new"], counters["tokens"])
            if stop_after_chains is not None and counters["new"] >= stop_after_chains:
                stop.set()
            if progress is not None:
                progress(
                    {
                        "chains_done": n_done0 + counters["new"],
                        "chains_total": total,
                        "questions_done": n_questions - sum(1 for v in q_left.values() if v > 0),
                        "questions_total": n_questions,
                        "tokens": counters["tokens"],
                        "tokens_per_s": counters["tokens"] / max(now - t0, 1e-9),
                        "active": 0,
                    }
                )

    jobs = [asyncio.create_task(chain(it, sid)) for it, sids in todo for sid in sids]
    try:
        await asyncio.gather(*jobs)
    finally:
        # one chain failed (or the run was stopped): the others stop before the client closes,
        # and every chain finished by then is flushed
        for j in jobs:
            j.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        if buffer:
            _write_chunk(state / "chunks", buffer)
        run.record(counters["new"], counters["tokens"])
        await be.aclose()
    return n_done0 + counters["new"] >= total
