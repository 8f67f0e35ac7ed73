"""Reading and writing trace-set directories.

A trace-set directory holds ``questions.parquet``, ``chains.parquet`` (zstd) and
``manifest.json`` (schema version, content hash, counts, fields, provenance).
Writes are atomic: everything goes to a hidden sibling directory that is renamed
into place at the end, so an interrupted write never leaves a half-written set
and never touches an existing one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stopwise.errors import TraceSetError
from stopwise.traces.model import Provenance, TraceSet, content_hash
from stopwise.traces.schema import CHAIN_SCHEMA, QUESTION_SCHEMA, SCHEMA_VERSION

MANIFEST = "manifest.json"
QUESTIONS = "questions.parquet"
CHAINS = "chains.parquet"


def manifest_of(ts: TraceSet) -> dict[str, Any]:
    return {
        "format": "stopwise-traces",
        "schema_version": ts.schema_version,
        "name": ts.name,
        "content_hash": ts.content_hash,
        "questions": ts.n_questions,
        "chains": ts.n_chains,
        "tokens": ts.n_tokens,
        "fields": ts.fields,
        "provenance": ts.provenance.model_dump(exclude_none=True),
    }


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _leaf_columns(schema: pa.Schema) -> list[tuple[str, pa.DataType]]:
    """Each Parquet leaf column of ``schema`` as (dotted path, leaf type): a
    ``list<float>`` column ``x`` is the leaf ``x.list.element``, as pyarrow writes it."""
    leaves = []
    for f in schema:
        path, t = f.name, f.type
        while pa.types.is_list(t):
            path, t = f"{path}.list.element", t.value_type
        leaves.append((path, t))
    return leaves


def _float_columns(schema: pa.Schema) -> list[str]:
    """Top-level names of the columns whose values are floats (possibly in lists)."""
    return [f.name for f, (_, t) in zip(schema, _leaf_columns(schema)) if pa.types.is_floating(t)]


def _parquet_options(table: pa.Table) -> dict[str, Any]:
    """Lossless Parquet settings for trace tables.

    Float columns (logprobs, entropies) are stored byte-stream-split and without a
    dictionary: a dictionary of near-unique floats only adds its own size, and
    splitting the bytes of each float into streams lets zstd find the exponents'
    regularity. Every other column keeps its dictionary (token strings repeat).
    ``benchmarks/trace_storage.py`` measures the gain on the bundled corpora;
    values and content hash are unchanged.
    """
    leaves = _leaf_columns(table.schema)
    floats = [p for p, t in leaves if pa.types.is_floating(t)]
    return {
        "compression": "zstd",
        "compression_level": 9,
        "use_dictionary": [p for p, t in leaves if not pa.types.is_floating(t)],
        "use_byte_stream_split": floats or False,
    }


def write_trace_set(ts: TraceSet, out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``ts`` to directory ``out`` atomically and return its path.

    Raises
    ------
    TraceSetError
        If ``out`` exists and ``overwrite`` is false (checked before writing anything).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise TraceSetError(
            f"output directory '{out}' already exists",
            hint="choose another --out or pass --overwrite",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        pq.write_table(ts.questions, tmp / QUESTIONS, **_parquet_options(ts.questions))
        pq.write_table(ts.chains, tmp / CHAINS, row_group_size=4096, **_parquet_options(ts.chains))
        with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
            json.dump(manifest_of(ts), fh, indent=2, sort_keys=False, ensure_ascii=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        for name in (QUESTIONS, CHAINS):
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_trace_set(path: str | os.PathLike[str], *, verify: bool = True) -> TraceSet:
    """Read a trace-set directory written by :func:`write_trace_set`.

    Parameters
    ----------
    path : path-like
    verify : bool
        Recompute the content hash and compare it with the manifest's.

    Raises
    ------
    TraceSetError
        If the directory, a file or the manifest is missing or corrupt, the schema
        version is newer than this stopwise, or the content hash does not match.
    """
    path = Path(path)
    if not path.is_dir():
        raise TraceSetError(
            f"trace set '{path}' not found (not a directory)",
            hint="create one with 'stopwise import ... --out DIR' or 'stopwise collect'",
        )
    mpath = path / MANIFEST
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise TraceSetError(f"'{path}' is not a trace set: {MANIFEST} is missing") from exc
    except json.JSONDecodeError as exc:
        raise TraceSetError(f"{mpath}:{exc.lineno}: corrupt manifest: {exc.msg}") from exc
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise TraceSetError(
            f"trace set '{path}' has schema version {version!r}; this stopwise reads up to {SCHEMA_VERSION}",
            hint="upgrade stopwise",
        )
    try:
        questions = pq.read_table(path / QUESTIONS)
        chains = pq.read_table(path / CHAINS)
    except (OSError, pa.ArrowException) as exc:
        raise TraceSetError(f"trace set '{path}': cannot read its Parquet files: {exc}") from exc
    questions = _conform(questions, QUESTION_SCHEMA, path / QUESTIONS)
    chains = _conform(chains, CHAIN_SCHEMA, path / CHAINS)
    if verify:
        h = content_hash(questions, chains)
        if h != manifest.get("content_hash"):
            raise TraceSetError(
                f"trace set '{path}' is corrupt: content hash {h[:12]} differs from the manifest's "
                f"{str(manifest.get('content_hash'))[:12]}",
                hint="re-import or re-collect it",
            )
    _check_layout(questions, chains, path / CHAINS)
    prov = Provenance.model_validate(manifest.get("provenance") or {"source": "unknown"})
    ts = TraceSet(
        name=manifest.get("name") or path.name,
        questions=questions,
        chains=chains,
        provenance=prov,
        schema_version=version,
    )
    ts.__dict__["content_hash"] = manifest["content_hash"] if not verify else h
    return ts


def _check_layout(questions: pa.Table, chains: pa.Table, where: Path) -> None:
    """Chains grouped by question in the order of the questions, each question's sorted by
    sample id, no id twice: the row layout every reader relies on (the content hash does not
    see row order, so a set re-sorted by another tool passes it)."""
    qids = questions.column("question_id").to_pylist()
    pos: dict[str, int] = {}
    for i, q in enumerate(qids):
        if q in pos:
            raise TraceSetError(f"{where.parent / QUESTIONS}: row {i + 1}: question id {q!r} again (first at row {pos[q] + 1})")
        pos[q] = i
    hint = "chains must be grouped by question in questions.parquet's order and sorted by sample_id; write the set with stopwise"
    last = (-1, -1)
    for row, (q, sid) in enumerate(zip(chains.column("question_id").to_pylist(), chains.column("sample_id").to_pylist())):
        if q not in pos:
            raise TraceSetError(f"{where}: row {row + 1}: question id {q!r} is not in {QUESTIONS}", hint=hint)
        key = (pos[q], sid)
        if key <= last:
            what = "again" if key == last else "out of order"
            raise TraceSetError(f"{where}: row {row + 1}: chain ({q!r}, sample {sid}) {what}", hint=hint)
        last = key


def _conform(table: pa.Table, schema: pa.Schema, where: Path) -> pa.Table:
    """Add missing optional columns as nulls and order columns as the schema says."""
    cols = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            if not col.type.equals(f.type):
                try:
                    col = col.cast(f.type)
                except pa.ArrowException as exc:
                    raise TraceSetError(f"{where}: column '{f.name}' has type {col.type}, expected {f.type}") from exc
            cols.append(col)
        elif not f.nullable:
            raise TraceSetError(f"{where}: required column '{f.name}' is missing")
        else:
            cols.append(pa.nulls(table.num_rows, type=f.type))
    return pa.Table.from_arrays(cols, schema=schema)
