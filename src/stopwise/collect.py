"""Collect a real trace set from a model: chains with logprobs and forced-answer probes.

:func:`collect` runs the embedded llama.cpp engine (:mod:`stopwise.backends.llamacpp`)
over a question set, many chains at once (several questions share a batch to
keep it full), with probes every ``probe_every`` tokens and at cue tokens.

Resumable: finished chains go to durable chunk files in ``<out>.collect/chunks``
(each written to a temporary name, fsynced and renamed); a second run with the
same settings reads them, skips the chains they hold and collects only the rest,
so a killed run loses only the chains that were in flight and duplicates nothing.
When every chain is done the trace set is assembled (answers clustered once) and
written atomically to ``<out>``; :func:`assemble` can also write the questions
completed so far.

Each chain's random stream is seeded from ``(seed, question_id, sample_id)``, so a
chain is the same whichever run, batch or order produced it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stopwise.backends.base import LOGPROB_CONVENTION, Sampling
from stopwise.backends.probes import DEFAULT_FORCING, forced_answer, forced_answer_done, token_cue
from stopwise.datasets import Dataset, DatasetItem, load_dataset
from stopwise.errors import ConfigError, TraceSetError


class CollectConfig(BaseModel):
    """Settings of one collection run (they define the run: a resume must match them)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    model: str = "embedded"
    questions: int = Field(600, ge=1)
    offset: int = Field(0, ge=0, description="skip this many questions of the dataset first")
    chains: int = Field(4, ge=1)
    chains_first: tuple[int, int] | None = Field(None, description="(M, K): the first M questions get K chains")
    max_tokens: int = Field(384, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    sampler_top_k: int = Field(40, ge=0)
    probe_every: int = Field(32, ge=0, description="0: no scheduled probes")
    cue_probes: bool = True
    probe_max_tokens: int = Field(16, ge=1)
    forcing: str = DEFAULT_FORCING
    direct: bool = Field(False, description="no chain of thought: the assistant turn starts with the forcing string, "
                                            "and the model writes only the answer (a think-or-not gate's direct probe)")
    top_k: int = Field(5, ge=0, le=5)
    seed: int = 0
    dataset_size: int = Field(500, ge=1, description="questions generated for reasoning-gym datasets")
    batch_chains: int = Field(8, ge=1, description="chains decoded together")
    n_threads: int | None = None
    flush_every: int = Field(32, ge=1, description="write a chunk after this many finished chains (or 60 s)")

    def chains_for(self, index: int) -> int:
        if self.chains_first and index < self.chains_first[0]:
            return max(self.chains, self.chains_first[1])
        return self.chains

    def identity(self) -> dict[str, Any]:
        """The fields that define the output (not how fast it is made); ``direct`` only when set, so that
        collections started before it existed still resume."""
        d = self.model_dump(exclude={"batch_chains", "n_threads", "flush_every"})
        if not d.get("direct"):
            d.pop("direct", None)
        return d


def chain_seed(seed: int, question_id: str, sample_id: int) -> int:
    h = hashlib.sha256(f"{seed}|{question_id}|{sample_id}".encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


@dataclass
class _Live:
    """A chain being collected: its per-token columns, probes and the positions probed."""

    item: DatasetItem
    sample_id: int
    seed: int
    tokens: list[str]
    raw: list[bytes]
    logprobs: list[float]
    top_lp: list[list[float]]
    top_tok: list[list[str]]
    entropy: list[float]
    conf: list[float]
    probes: list[tuple[int, str | None, float, int, str]]
    probed_at: set[int]
    finish: str | None = None

    def add(self, st: Any, cfg: CollectConfig) -> list[tuple[int, str]]:
        """Record one generated token; returns the probes to take now as (position, cue).

        Scheduled probes every ``probe_every`` tokens, cue probes after a blank line
        and before a transition word; none at ``max_tokens`` (the chain ends there).
        """
        prev = self.tokens[-1] if self.tokens else ""
        self.tokens.append(st.text)
        self.raw.append(st.raw if st.raw is not None else st.text.encode("utf-8"))
        self.logprobs.append(st.logprob)
        self.top_lp.append(st.top_logprobs[: cfg.top_k])
        self.top_tok.append(st.top_tokens[: cfg.top_k])
        self.entropy.append(st.entropy)
        conf = st.confidence
        if math.isnan(conf) and st.top_logprobs:  # HTTP: DeepConf confidence over the top-k the server gives
            conf = -sum(st.top_logprobs) / len(st.top_logprobs)
        self.conf.append(conf)
        n = len(self.tokens)
        out: list[tuple[int, str]] = []
        cue, before = token_cue(st.text, prev) if cfg.cue_probes else (None, False)
        if cue is not None:
            pos = n - 1 if before else n
            if 0 < pos < cfg.max_tokens and pos not in self.probed_at:
                self.probed_at.add(pos)
                out.append((pos, cue))
        if cfg.probe_every and n % cfg.probe_every == 0 and n < cfg.max_tokens and n not in self.probed_at:
            self.probed_at.add(n)
            out.append((n, "schedule"))
        return out


def _state_dir(out: Path) -> Path:
    return out.with_name(out.name + ".collect")


_COMPACTED = b"stopwise.compacted"  # Parquet key-value metadata of a chunk written by compact_chunks


def _write_chunk(chunks: Path, records: list[dict[str, Any]], *, compacted: bool = False) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stopwise.traces.io import _parquet_options

    existing = sorted(chunks.glob("chunk-*.parquet"))
    idx = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
    final = chunks / f"chunk-{idx:06d}.parquet"
    tmp = chunks / f".chunk-{idx:06d}.{os.getpid()}.tmp"
    table = pa.Table.from_pylist(records)
    if compacted:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _COMPACTED: b"1"})
    pq.write_table(table, tmp, **_parquet_options(table))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fd = os.open(chunks, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return final


class _RunLog:
    """Wall-clock of each collection run, appended to ``runs.jsonl`` in the state folder at
    every chunk flush (a killed run keeps what it logged at its last flush, like its chains)."""

    def __init__(self, state: Path, build: str | None) -> None:
        self.path = state / "runs.jsonl"
        self.started = time.time()
        self.t0 = time.monotonic()
        self.build = build

    def record(self, chains: int, tokens: int) -> None:
        if not chains and not tokens:  # a run that did nothing (an upstream that failed at once, a kill while
            return  # loading) is not a run of the collection: its run count and wall-clock hold real runs only
        line = {"run": round(self.started, 3), "seconds": round(time.monotonic() - self.t0, 1), "chains": chains,
                "tokens": tokens, "build": self.build}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


def _runs_summary(state: Path) -> dict[str, Any] | None:
    """Totals over the logged runs (the last line of each run counts): wall-clock, chains, tokens."""
    path = state / "runs.jsonl"
    if not path.is_file():
        return None
    last: dict[float, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            last[rec["run"]] = rec
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a kill mid-write
    if not last:
        return None
    secs = sum(r["seconds"] for r in last.values())
    toks = sum(r["tokens"] for r in last.values())
    return {"runs": len(last), "wall_seconds": round(secs, 1), "chains": sum(r["chains"] for r in last.values()),
            "tokens": toks, "tokens_per_s": round(toks / secs, 2) if secs else None,
            "first_run": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(min(last)))}


def seed_chunks(state: Path, trace_set: str | os.PathLike[str], cfg: CollectConfig,
                items: list[DatasetItem] | None = None) -> int:
    """Add the chains of an assembled trace set (same collection settings) as a chunk.

    Chains already in the state are skipped. Returns how many were added.

    Raises
    ------
    ConfigError
        If the set was not collected with these settings, or was stored with rounded
        floats (the working state holds full precision; rounded chains would mix in
        unrecorded), or (given the collection's ``items``) one of its questions has
        another text or reference than the collection's question of that id.
    """
    from stopwise.traces.io import read_trace_set

    ts = read_trace_set(trace_set)
    if ts.provenance.float_precision:
        raise ConfigError(
            f"trace set {trace_set} was stored with its floats rounded to {ts.provenance.float_precision.get('mantissa_bits')} "
            "mantissa bits; seeding from it would mix rounded chains into the full-precision working state",
            hint="seed from a set assembled without --round-floats",
        )
    theirs = (ts.provenance.model_extra or {}).get("collect")
    if json.loads(json.dumps(theirs)) != json.loads(json.dumps(cfg.identity())):
        raise ConfigError(
            f"trace set {trace_set} was not collected with these settings (provenance.collect differs)",
            hint="seed only from a set assembled from the same collection",
        )
    graded: set[str] = set()
    if items is not None:
        ours = {it.question_id: it for it in items}
        for q in ts.questions.select(["question_id", "question", "reference"]).to_pylist():
            it = ours.get(q["question_id"])
            if it is not None and (it.question, it.reference) != (q["question"], q["reference"]):
                raise ConfigError(
                    f"trace set {trace_set} holds question {q['question_id']!r} with another text or reference than "
                    f"{cfg.dataset} gives it now: its chains would be joined to another question",
                    hint="seed only from a set of the same dataset version",
                )
        graded = {it.question_id for it in items if it.grade is not None}
    have = {(r["question_id"], int(r["sample_id"])) for r in read_chunks(state)}
    keep = [c for c in ts.chains.column_names if c not in ("answer_class", "probe_class")]
    rows = [r for r in ts.chains.select(keep).to_pylist() if (r["question_id"], int(r["sample_id"])) not in have]
    for r in rows:
        if r["question_id"] not in graded:  # judged by the reference when assembled, as the chains collected here
            r.pop("correct", None)
    if rows:
        _write_chunk(state / "chunks", rows)
    return len(rows)


def read_chunks(state: Path, files: list[Path] | None = None) -> list[dict[str, Any]]:
    """Every chain record written so far (deduplicated by question and sample), or those of ``files``."""
    import pyarrow.parquet as pq

    seen: dict[tuple[str, int], dict[str, Any]] = {}
    for p in sorted((state / "chunks").glob("chunk-*.parquet")) if files is None else files:
        try:
            rows = pq.read_table(p).to_pylist()
        except Exception as exc:  # noqa: BLE001 - a torn file cannot exist (rename), but say so if it does
            raise TraceSetError(f"collection chunk {p} is unreadable: {exc}", hint="delete it and run again") from exc
        for r in rows:
            seen.setdefault((r["question_id"], int(r["sample_id"])), r)
    return list(seen.values())


def compact_chunks(out: str | os.PathLike[str]) -> tuple[int, int, Path | None]:
    """Merge a collection's small chunks into one chunk file.

    A running collection flushes a chunk every 32 chains or 60 seconds, so a long
    collection leaves hundreds of small files. This writes every chain of the chunks
    not compacted before into one new chunk (the trace writer's storage settings,
    lossless), then deletes them; chunks compacted earlier are left as they are, so
    a state kept in version control grows by one file per compaction. Safe to kill:
    the merged file is complete before anything is deleted, and a chain found in two
    chunks is read once (:func:`read_chunks`). Do not run it while the collection runs.

    Returns ``(files merged, chains in the new chunk, new chunk path or None)``.
    """
    state = _require_state(out)
    with _exclusive(state):
        return _compact(state)


def _compact(state: Path) -> tuple[int, int, Path | None]:
    import pyarrow.parquet as pq

    small = []
    for p in sorted((state / "chunks").glob("chunk-*.parquet")):
        try:
            meta = pq.read_schema(p).metadata or {}
        except Exception as exc:  # noqa: BLE001 - as in read_chunks
            raise TraceSetError(f"collection chunk {p} is unreadable: {exc}", hint="delete it and run again") from exc
        if _COMPACTED not in meta:
            small.append(p)
    if not small:
        return 0, 0, None
    rows = read_chunks(state, small)
    path = _write_chunk(state / "chunks", rows, compacted=True)
    for p in small:
        p.unlink()
    return len(small), len(rows), path


@contextlib.contextmanager
def _exclusive(state: Path) -> Iterator[None]:
    """Hold ``state/.lock`` while collecting or compacting: two processes writing chunks into one
    state could pick the same chunk name and replace each other's chains."""
    try:
        import fcntl
    except ImportError:  # not POSIX: unguarded
        yield
        return
    with open(state / ".lock", "a+", encoding="utf-8") as f:  # closing it releases the lock
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a process"
            raise ConfigError(f"{state} is in use: {holder} is collecting into it or compacting it",
                              hint="wait for it to end, or stop it (kill PID keeps its finished chains), then run again") from None
        f.seek(0)
        f.truncate()
        f.write(f"stopwise pid {os.getpid()}")
        f.flush()
        yield


def _require_state(out: str | os.PathLike[str]) -> Path:
    """The state folder of the collection at ``out``; a clear error where none was started."""
    state = _state_dir(Path(out))
    if not (state / "config.json").is_file():
        raise ConfigError(f"no collection at {out} (no {state}/config.json)",
                          hint="pass the --out of a collection started with stopwise collect")
    return state


def _read_state_config(state: Path) -> dict[str, Any]:
    """``state/config.json``: the collection's identity and command, checked."""
    path = state / "config.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not isinstance(meta.get("identity"), dict):
            raise ValueError("expected an object with an 'identity' object")
        CollectConfig(**meta["identity"])
    except (OSError, ValueError, TypeError) as exc:  # JSONDecodeError and pydantic's ValidationError are ValueErrors
        raise TraceSetError(f"collection state {path} is unreadable: {str(exc).splitlines()[0]}",
                            hint="it may be damaged or written by a newer stopwise; if its chunks are worth keeping, "
                            "restore config.json, else delete the state folder") from exc
    return meta


def _check_out(out: Path, ident: dict[str, Any]) -> None:
    """Refuse an ``out`` that holds something a finished collection would replace:
    only a missing path, an empty folder or a trace set of this same collection may be there."""
    if not out.exists():
        return
    what = "a file" if not out.is_dir() else None
    if what is None:
        if not any(out.iterdir()):
            return
        from stopwise.traces.io import MANIFEST

        try:
            theirs = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["provenance"]["collect"]
        except (OSError, ValueError, KeyError, TypeError):
            what = "a folder that is not a trace set written by stopwise collect"
        else:
            if theirs == json.loads(json.dumps(ident)):  # the manifest holds the identity as JSON
                return
            what = "a trace set of another collection"
    raise ConfigError(f"--out {out} already holds {what}; the collection would replace it",
                      hint="choose another --out (a new path, an empty folder, or this collection's own earlier output)")


def questions_fingerprint(items: list[DatasetItem]) -> str:
    """sha256 of the selected questions (ids, texts, references): the same settings over an
    edited dataset file, or a changed generator, give another fingerprint."""
    doc = json.dumps([[it.question_id, it.question, it.reference] for it in items], ensure_ascii=False)
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()


def _open_state(out: Path, cfg: CollectConfig, command: str, fingerprint: str | None = None) -> Path:
    state = _state_dir(out)
    ident = cfg.identity()
    cfg_path = state / "config.json"
    new = json.loads(json.dumps(ident))
    meta = _read_state_config(state) if cfg_path.is_file() else None
    old = meta["identity"] if meta else None
    started = any((state / "chunks").glob("chunk-*.parquet"))
    if old == new and started and fingerprint and meta.get("questions_sha256") not in (None, fingerprint):
        raise ConfigError(
            f"{state} was started on other questions than {cfg.dataset} gives now (questions sha256 "
            f"{meta['questions_sha256'][:12]} there, {fingerprint[:12]} now): the dataset file was edited, or its generator changed",
            hint="collect into another --out, or restore the questions the collection started with",
        )
    if old is not None and old != new and started:
        raise ConfigError(
            f"{state} holds a collection with other settings: {_settings_diff(old, new, 'now')}",
            hint=f"use the same settings to resume, or another --out (or delete {state})",
        )
    _check_out(out, ident)
    try:
        (state / "chunks").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the collection state {state}: {exc.strerror or exc}",
                          hint="choose another --out in a writable folder") from exc
    if old == new and (not fingerprint or meta.get("questions_sha256") == fingerprint):
        return state
    # a new collection, nothing collected under the old settings or questions (e.g. an upstream
    # that was down), or a state from before questions were fingerprinted (it keeps its command)
    record = {"identity": ident, "command": meta["command"] if old == new and meta.get("command") else command}
    if fingerprint:
        record["questions_sha256"] = fingerprint
    tmp = state / ".config.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, cfg_path)
    return state


def _check_model(state: Path, meta: dict[str, Any], resolved: Any, record: bool = False) -> None:
    """The model file must be the one the collection started with (a GGUF path can be replaced by
    another file): its sha256 is kept in config.json (with ``record``, written where missing)."""
    digest = getattr(resolved, "sha256", None)
    if digest is None:  # an HTTP upstream: nothing to pin
        return
    kept = meta.get("model_sha256")
    if kept is not None and kept != digest:
        raise ConfigError(
            f"the model file {getattr(resolved, 'path', resolved)} has sha256 {digest[:12]}, but the collection at {state} "
            f"was collected with sha256 {kept[:12]}: its chains would mix two models",
            hint="restore the model file the collection started with, or collect into another --out",
        )
    if kept is None and record:
        tmp = state / ".config.json.tmp"
        tmp.write_text(json.dumps({**meta, "model_sha256": digest}, indent=1))
        os.replace(tmp, state / "config.json")


def _select(cfg: CollectConfig) -> tuple[Dataset, list[DatasetItem]]:
    ds = load_dataset(cfg.dataset, size=max(cfg.dataset_size, cfg.offset + cfg.questions), seed=cfg.seed)
    items = ds.items[cfg.offset : cfg.offset + cfg.questions]
    if len(items) < cfg.questions:
        raise ConfigError(
            f"dataset '{cfg.dataset}' has {len(ds.items)} questions; offset {cfg.offset} + {cfg.questions} asked",
            hint="lower --questions or --offset",
        )
    return ds, items


ProgressFn = Callable[[dict[str, Any]], None]


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
    from the top logprobs the server returns."""
    import asyncio

    from stopwise.backends.openai_compat import OpenAICompatBackend

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
                async for st in be.stream(prompt, smp, require_logprobs=True):
                    steps.append(st)
                    counters["tokens"] += 1
                    for pos, cue in lc.add(st, cfg):
                        tasks.append(asyncio.create_task(probe(prompt, steps[:pos], pos, cue)))
                lc.probes = list(await asyncio.gather(*tasks))
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


def _record(lc: _Live, cfg: CollectConfig, build: str | None = None) -> dict[str, Any]:
    from stopwise.answers import extract_answer, find_candidates

    text = b"".join(lc.raw).decode("utf-8", errors="replace")
    if cfg.direct:  # the text continues the forcing string: the answer is what closes the box
        from stopwise.backends.probes import forced_answer

        answer = forced_answer(text)
    else:
        answer = extract_answer(text)
    probes = sorted(lc.probes, key=lambda p: p[0])
    # token end offsets in characters of the decoded text, for the first candidate answer's token
    # position (decoded incrementally, as the whole text is: a character split over two tokens
    # counts once, with the token that completes it)
    import codecs

    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    ends, acc = [], 0
    for raw in lc.raw:
        acc += len(dec.decode(raw))
        ends.append(acc)
    cands = find_candidates(text)
    first = -1
    if cands:
        import bisect

        first = min(bisect.bisect_left(ends, cands[0].end) + 1, len(lc.tokens))
    rec: dict[str, Any] = {
        "question_id": lc.item.question_id,
        "sample_id": lc.sample_id,
        "n_tokens": len(lc.tokens),
        "finish_reason": lc.finish,
        "text": text,
        "answer": answer,
        "tokens": lc.tokens,
        "token_logprobs": lc.logprobs,
        "top_logprobs": lc.top_lp if cfg.top_k else None,
        "top_tokens": lc.top_tok if cfg.top_k else None,
        "entropy": lc.entropy,
        "token_confidence": lc.conf,
        "probe_position": [p[0] for p in probes],
        "probe_answer": [p[1] for p in probes],
        "probe_logprob": [p[2] if p[1] is not None else math.nan for p in probes],
        "probe_cost": [p[3] for p in probes],
        "probe_cue": [p[4] for p in probes],
        "first_candidate_position": first,
        # the llama.cpp build: builds for other CPU features round the logits differently
        "metadata": json.dumps({"seed": lc.seed, **({"build": build} if build else {})}),
    }
    if lc.item.grade is not None:
        rec["correct"] = bool(lc.item.grade(answer))
    return rec


def _settings_diff(old: dict[str, Any], new: dict[str, Any], new_is: str) -> str:
    """``key OLD there, NEW <new_is>`` for each setting that differs between two identities (as JSON)."""
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k} {old.get(k, 'unset')!r} there, {new.get(k, 'unset')!r} {new_is}" for k in diff)


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
        tokenizer="the server's" if http else "the model's own (llama.cpp, from the GGUF file)",
        chat_template="client-side: the server's /props template, else ChatML" if http else "the GGUF file's tokenizer.chat_template",
        sampling={
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "top_k": cfg.sampler_top_k,
            "max_tokens": cfg.max_tokens,
            "seed": cfg.seed,
            "chain_seed": "sha256(f'{seed}|{question_id}|{sample_id}')[:8] little-endian >> 1",
            "system_prompt": ds.system_prompt,
        },
        forcing_string=cfg.forcing,
        probe_schedule=f"every {cfg.probe_every} tokens" + (" and at cue tokens (blank line after; wait/hmm/alternatively/but/however before)" if cfg.cue_probes else "")
        + ("; direct answers: the assistant turn starts with the forcing string (no chain of thought)" if cfg.direct else ""),
        logprob_convention=f"as reported by the server (top-{cfg.top_k}); token_confidence over those top-{cfg.top_k}; no entropy" if http else LOGPROB_CONVENTION,
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

