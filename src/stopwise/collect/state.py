"""The durable working state of a collection: chunk files, the run log, resume and seeding checks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stopwise.collect.chains import CollectConfig
from stopwise.datasets import DatasetItem
from stopwise.errors import ConfigError, TraceSetError


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


def _settings_diff(old: dict[str, Any], new: dict[str, Any], new_is: str) -> str:
    """``key OLD there, NEW <new_is>`` for each setting that differs between two identities (as JSON)."""
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k} {old.get(k, 'unset')!r} there, {new.get(k, 'unset')!r} {new_is}" for k in diff)
