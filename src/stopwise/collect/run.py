"""collect() and assemble(): a collection run from start to trace set."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from stopwise.backends.base import LOGPROB_CONVENTION, Sampling
from stopwise.traces.textprobes import TEXT_CUE_SCHEDULE
from stopwise.backends.probes import forced_answer, forced_answer_done
from stopwise.collect.chains import (
    CollectConfig,
    ProgressFn,
    _Live,
    _record,
    chain_seed,
)
from stopwise.collect.http import _collect_http, _HttpModel, is_http
from stopwise.collect.state import (
    _check_model,
    _check_out,
    _exclusive,
    _open_state,
    _read_state_config,
    _require_state,
    _RunLog,
    _runs_summary,
    _settings_diff,
    _state_dir,
    _write_chunk,
    questions_fingerprint,
    read_chunks,
    seed_chunks,
)
from stopwise.datasets import Dataset, DatasetItem, load_dataset
from stopwise.errors import ConfigError


def _select(cfg: CollectConfig) -> tuple[Dataset, list[DatasetItem]]:
    ds = load_dataset(cfg.dataset, size=max(cfg.dataset_size, cfg.offset + cfg.questions), seed=cfg.seed)
    items = ds.items[cfg.offset : cfg.offset + cfg.questions]
    if len(items) < cfg.questions:
        raise ConfigError(
            f"dataset '{cfg.dataset}' has {len(ds.items)} questions; offset {cfg.offset} + {cfg.questions} asked",
            hint="lower --questions or --offset",
        )
    return ds, items




def collect(
    cfg: CollectConfig,
    out: str | os.PathLike[str],
    *,
    progress: ProgressFn | None = None,
    command: str | None = None,
    stop_after_chains: int | None = None,
    engine: Any = None,
    seed_from: str | os.PathLike[str] | None = None,
    round_floats: int | None = None,
) -> Path | None:
    """Collect (or resume) the trace set ``cfg`` describes into ``out``.

    Parameters
    ----------
    cfg : CollectConfig
    out : path
        Where the trace set goes; the working state is ``<out>.collect``.
    progress : callable, optional
        Called after each step with counters (``chains_done``, ``chains_total``,
        ``questions_done``, ``questions_total``, ``tokens``, ``tokens_per_s``).
    stop_after_chains : int, optional
        Stop (cleanly, chunks flushed) after this many new chains; for tests and
        for collecting in slices. Returns None then, unless everything is done.
    engine : BatchEngine, optional
        An engine already loaded with ``cfg.model`` (reuse across calls).
    seed_from : path, optional
        A trace set assembled from an earlier collection with the same settings
        (e.g. a bundled partial snapshot): its chains count as collected, so a
        collection whose working state was lost resumes from it.
    round_floats : int, optional
        Store the finished set's floats at this many mantissa bits (see
        :func:`assemble`); not part of the collection's identity.

    Returns
    -------
    pathlib.Path or None
        The written trace set, or None if stopped before the end.
    """
    from stopwise.backends.chat import render_chat_template
    from stopwise.backends.llama_engine import BatchEngine
    from stopwise.models import resolve_model

    out = Path(out)
    command = command or " ".join(shlex.quote(a) for a in ["stopwise", *sys.argv[1:]])
    ds, items = _select(cfg)  # bad dataset names fail before anything is written
    if cfg.direct and is_http(cfg.model):
        raise ConfigError("--direct needs the embedded backend (it continues the prompt with the forcing string as token ids)",
                          hint="collect direct answers with --model embedded or a GGUF path")
    if cfg.api == "chat" and not is_http(cfg.model):
        raise ConfigError(f"--upstream-api chat needs an HTTP model (a URL), not '{cfg.model}'",
                          hint="e.g. --model http://127.0.0.1:8000 --upstream-api chat; the embedded model is collected with forced probes")
    resolved = _HttpModel(cfg.model) if is_http(cfg.model) else resolve_model(cfg.model)  # a wrong --model fails here too
    state = _open_state(out, cfg, command, questions_fingerprint(items))
    with _exclusive(state):
        _check_model(state, _read_state_config(state), resolved, record=True)
        if seed_from is not None:
            seed_chunks(state, seed_from, cfg, items)
        done = {(r["question_id"], int(r["sample_id"])) for r in read_chunks(state)}
        # first every question's base chains, then the extra chains of the first M questions,
        # so a partial collection is a usable set early (see assemble(complete_only=True))
        todo: list[tuple[DatasetItem, list[int]]] = []
        extra: list[tuple[DatasetItem, list[int]]] = []
        total = 0
        for i, it in enumerate(items):
            k = cfg.chains_for(i)
            total += k
            missing = [s for s in range(k) if (it.question_id, s) not in done]
            if [s for s in missing if s < cfg.chains]:
                todo.append((it, [s for s in missing if s < cfg.chains]))
            if [s for s in missing if s >= cfg.chains]:
                extra.append((it, [s for s in missing if s >= cfg.chains]))
        todo += extra
        n_done0 = total - sum(len(m) for _, m in todo)
        if is_http(cfg.model):
            if todo:
                import asyncio

                finished = asyncio.run(_collect_http(cfg, state, ds, todo, total - sum(len(m) for _, m in todo), total, len(items), progress, stop_after_chains))
                if not finished:
                    return None
            return assemble(out, cfg=cfg, resolved=resolved, command=command, complete_only=False, round_floats=round_floats)
        if todo:
            max_k = max(len(m) for _, m in todo)
            width = max(cfg.batch_chains, max_k)
            forcing_len = len(cfg.forcing) + 4
            if engine is None:
                longest = max(len(it.question) for it, _ in todo) // 2 + 256  # a generous bound on prompt tokens
                n_ctx_seq = longest + cfg.max_tokens + forcing_len + cfg.probe_max_tokens + 8
                engine = BatchEngine(
                    str(resolved.path), n_ctx_seq=n_ctx_seq, n_seq_max=min(256, 2 * width + 4), n_threads=cfg.n_threads
                )
            template = engine.metadata.get("tokenizer.chat_template")
            forcing_ids = engine.tokenize(cfg.forcing)

            def prompt_ids(it: DatasetItem) -> list[int]:
                msgs = [{"role": "system", "content": ds.system_prompt}, {"role": "user", "content": it.question}]
                text = render_chat_template(template, msgs) if template else f"{ds.system_prompt}\n\n{it.question}\n\n"
                return engine.tokenize_prompt(text) + (list(forcing_ids) if cfg.direct else [])

            sampling0 = Sampling(cfg.temperature, cfg.top_p, cfg.sampler_top_k, cfg.max_tokens)
            live: dict[int, _Live] = {}
            buffer: list[dict[str, Any]] = []
            last_flush = time.monotonic()
            t0 = time.monotonic()
            tokens = 0
            new_chains = 0
            run = _RunLog(state, engine.build)
            q_left: dict[str, int] = {}
            for it, m in todo:
                q_left[it.question_id] = q_left.get(it.question_id, 0) + len(m)
            questions_done = len(items) - len(q_left)
            queue = list(todo)
            stopping = False
            try:
                while queue or live:
                    # (probes take spare sequence ids too: a question is admitted when its chains have theirs)
                    while (queue and not stopping and (not live or len(live) + len(queue[0][1]) <= cfg.batch_chains)
                           and engine.free_seqs >= len(queue[0][1])):
                        it, sids = queue.pop(0)
                        samplings = []
                        for s in sids:
                            seed = chain_seed(cfg.seed, it.question_id, s)
                            samplings.append(dataclasses.replace(sampling0, seed=seed))
                        cids = engine.submit(prompt_ids(it), samplings)
                        for cid, s, smp in zip(cids, sids, samplings):
                            live[cid] = _Live(it, s, int(smp.seed), [], [], [], [], [], [], [], [], set())
                    for ev in engine.step():
                        lc = live.get(ev.chain)
                        if lc is None:
                            continue
                        if ev.kind == "token":
                            tokens += 1
                            for pos, cue in lc.add(ev.step, cfg):
                                engine.request_probe(ev.chain, forcing_ids, cfg.probe_max_tokens, cue=cue, stop=forced_answer_done, position=pos)
                        elif ev.kind == "probe":
                            pr = ev.probe
                            lc.probes.append((pr.position, forced_answer(pr.text), pr.logprob, pr.cost, pr.cue))
                        elif ev.kind == "finished":
                            lc.finish = ev.finish_reason
                    # chains are done when finished and no probe of theirs is in flight
                    for cid in [c for c, lc in live.items() if lc.finish and not engine.has_probes(c)]:
                        lc = live.pop(cid)
                        buffer.append(_record(lc, cfg, build=engine.build))
                        new_chains += 1
                        q_left[lc.item.question_id] -= 1
                        if q_left[lc.item.question_id] == 0:
                            questions_done += 1
                        if stop_after_chains is not None and new_chains >= stop_after_chains:
                            stopping = True
                            queue.clear()
                            for c in list(live):
                                engine.cancel(c)
                            live.clear()
                            break
                    now = time.monotonic()
                    if buffer and (now - last_flush > 60 or len(buffer) >= cfg.flush_every or not (queue or live)):
                        _write_chunk(state / "chunks", buffer)
                        buffer = []
                        last_flush = now
                        run.record(new_chains, tokens)
                    if progress is not None:
                        progress(
                            {
                                "chains_done": n_done0 + new_chains,
                                "chains_total": total,
                                "questions_done": questions_done,
                                "questions_total": len(items),
                                "tokens": tokens,
                                "tokens_per_s": tokens / max(now - t0, 1e-9),
                                "active": len(live),
                            }
                        )
            finally:
                if buffer:
                    _write_chunk(state / "chunks", buffer)
                run.record(new_chains, tokens)
            if stopping and n_done0 + new_chains < total:
                return None
        return assemble(out, cfg=cfg, resolved=resolved, command=command, complete_only=False, round_floats=round_floats)


def check_assemble_settings(out: str | os.PathLike[str], given: dict[str, Any]) -> None:
    """Refuse collection settings given beside an assembly that differ from the collection's own.

    ``assemble`` writes what ``OUT.collect`` holds, with the settings it was collected with; a
    setting given with it (``given``: identity keys of :class:`CollectConfig`) is accepted
    only where it agrees, so that a collection's own command with ``--assemble-partial``
    added works, and any other setting is not silently ignored.
    """
    state = _state_dir(Path(out))
    if not given or not (state / "config.json").is_file():
        return  # assemble() names the missing collection
    stored = _read_state_config(state)["identity"]
    # both through identity(), as JSON: pace settings and direct=False drop out, tuples compare as lists
    have = json.loads(json.dumps(CollectConfig(**stored).identity()))
    try:
        mine = json.loads(json.dumps(CollectConfig(**{**stored, **given}).identity()))
    except ValidationError as exc:  # an unknown setting or a bad value
        err = exc.errors()[0]
        raise ConfigError(f"collection setting {'.'.join(map(str, err['loc']))}: {err['msg']}") from exc
    if mine != have:
        raise ConfigError(
            f"{state} was collected with other settings than given: {_settings_diff(have, mine, 'given')}",
            hint="assembling writes the collection as it was collected: give only --out (and --round-floats), "
            "or that collection's own settings",
        )


def assemble(
    out: str | os.PathLike[str],
    *,
    cfg: CollectConfig | None = None,
    resolved: Any = None,
    command: str | None = None,
    complete_only: bool = True,
    name: str | None = None,
    assembled_by: str | None = None,
    round_floats: int | None = None,
) -> Path:
    """Write the trace set from the chunks collected so far.

    With ``complete_only`` only questions with all their base ``chains`` are
    kept (with whatever extra chains they have): a partial corpus that is still a
    proper many-chains-per-question set. With ``round_floats`` the chains' floats are
    stored at that many mantissa bits (:mod:`stopwise.traces.precision`; the working
    state keeps full precision, so the set can be assembled again losslessly).
    """
    from stopwise import __version__
    from stopwise.models import resolve_model
    from stopwise.traces.io import write_trace_set
    from stopwise.traces.model import Provenance, Question, build_trace_set

    out = Path(out)
    state = _require_state(out)
    meta = _read_state_config(state)
    if cfg is None:
        cfg = CollectConfig(**meta["identity"])
    _check_out(out, cfg.identity())
    command = command or meta.get("command")
    http = is_http(cfg.model)
    chat = http and cfg.api == "chat"
    resolved = resolved or (_HttpModel(cfg.model) if http else resolve_model(cfg.model))
    ds, items = _select(cfg)
    fingerprint = meta.get("questions_sha256")
    if fingerprint and fingerprint != questions_fingerprint(items):
        raise ConfigError(
            f"{cfg.dataset} gives other questions now than the collection at {state} was collected on (questions sha256 "
            f"{fingerprint[:12]} there, {questions_fingerprint(items)[:12]} now): its chains would be joined to the wrong questions",
            hint="restore the dataset file (or the reasoning-gym version) the collection used",
        )
    _check_model(state, meta, resolved)
    records = read_chunks(state)
    # complete: every base chain (sample ids 0..chains-1) is there; extra chains do not stand in for one
    base: dict[str, set[int]] = {}
    for r in records:
        base.setdefault(r["question_id"], set())
        if int(r["sample_id"]) < cfg.chains:
            base[r["question_id"]].add(int(r["sample_id"]))
    keep = [(i, it) for i, it in enumerate(items)
            if (len(base.get(it.question_id, ())) == cfg.chains if complete_only else it.question_id in base)]
    if not keep:
        raise ConfigError(f"no question of the collection at {state} has its {cfg.chains if complete_only else 1} "
                          f"chain(s) yet; nothing to write", hint="collect longer first (run the same collect command)")
    keep_ids = {it.question_id for _, it in keep}
    questions = [Question(it.question_id, it.question, it.reference, {k: v for k, v in it.metadata.items() if k != "config"}) for _, it in keep]
    chains = [r for r in records if r["question_id"] in keep_ids]
    for r in chains:
        for k in [k for k, v in r.items() if v is None and k in ("top_logprobs", "top_tokens")]:
            del r[k]
    prov = Provenance(
        source=f"collected with stopwise from {ds.name} ({ds.source})",
        command=command,
        model=resolved.title,
        model_sha256=resolved.sha256,
        tokenizer=("the server's (a token: one logprob entry, else one stream chunk)" if chat else "the server's") if http
        else "the model's own (llama.cpp, from the GGUF file)",
        chat_template=("the server's own (chat API)" if chat else "client-side: the server's /props template, else ChatML") if http
        else "the GGUF file's tokenizer.chat_template",
        sampling={
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "top_k": cfg.sampler_top_k,
            "max_tokens": cfg.max_tokens,
            "seed": cfg.seed,
            "chain_seed": "sha256(f'{seed}|{question_id}|{sample_id}')[:8] little-endian >> 1",
            "system_prompt": ds.system_prompt,
        },
        forcing_string=None if chat else cfg.forcing,
        probe_schedule=TEXT_CUE_SCHEDULE + "; read from the text of a chat-only upstream" if chat else f"every {cfg.probe_every} tokens" + (" and at cue tokens (blank line after; wait/hmm/alternatively/but/however before)" if cfg.cue_probes else "")
        + ("; direct answers: the assistant turn starts with the forcing string (no chain of thought)" if cfg.direct else ""),
        logprob_convention=("as reported by the chat server, where it returns them" if chat else None) or f"as reported by the server (top-{cfg.top_k}); token_confidence over those top-{cfg.top_k}; no entropy" if http else LOGPROB_CONVENTION,
        license=f"questions: {ds.license}; outputs of {resolved.title} (Apache-2.0 upstream)",
        stopwise_version=__version__,
        notes=f"{len(keep)} of {len(items)} questions complete" + ("" if len(keep) == len(items) else " (partial collection)")
        + ("" if http else f"; {_builds_note(chains)}")
        + (f"; assembled by: {assembled_by}" if assembled_by else ""),
        collect=cfg.identity(),
        collection_runs=_runs_summary(state),
    )
    ts = build_trace_set(name or out.name, questions, chains, prov)
    if round_floats is not None:
        from stopwise.traces.precision import with_float_precision

        ts = with_float_precision(ts, round_floats)
    return write_trace_set(ts, out, overwrite=True)


def _builds_note(chains: list[dict[str, Any]]) -> str:
    """Which llama.cpp builds decoded the chains, with counts (chains collected before
    builds were recorded are counted as such)."""
    counts: dict[str, int] = {}
    for r in chains:
        m = r.get("metadata") or {}
        b = (json.loads(m) if isinstance(m, str) else m).get("build", "not recorded")
        counts[b] = counts.get(b, 0) + 1
    return "llama.cpp builds: " + ", ".join(f"{b}: {n} chains" for b, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def collection_status(out: str | os.PathLike[str]) -> dict[str, Any]:
    """Counts of a collection in progress (questions complete, chains, tokens)."""
    state = _require_state(out)
    cfg = CollectConfig(**_read_state_config(state)["identity"])
    recs = read_chunks(state)
    by_q: dict[str, int] = {}
    for r in recs:
        by_q[r["question_id"]] = by_q.get(r["question_id"], 0) + 1
    return {"chains": len(recs), "tokens": sum(int(r["n_tokens"]) for r in recs), "questions_started": len(by_q), "config": cfg}
