"""The in-memory trace set: two Arrow tables, a provenance record and numpy views.

Build one with :func:`build_trace_set` from plain records (importers do this);
read and write them with :mod:`stopwise.traces.io`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from stopwise.errors import TraceSetError, UnsupportedError
from stopwise.traces.schema import (
    CHAIN_COLUMNS,
    CHAIN_SCHEMA,
    MISSING,
    PROBE_COLUMNS,
    QUESTION_SCHEMA,
    SCHEMA_VERSION,
)


class Provenance(BaseModel):
    """How a trace set was produced. Every field is optional but ``source``.

    ``sampling`` holds temperature, top_p, max_tokens, seeds...; ``probe_schedule``
    says where probes were taken ("every 32 tokens and at cues", "text cues");
    ``logprob_convention`` is "raw log-softmax at temperature 1" for collected sets.
    ``float_precision`` is set when the chains' floats were stored rounded
    (:func:`stopwise.traces.precision.with_float_precision`): mantissa bits, rounding
    rule, largest change this rounding made and the lossless set's content hash;
    absent: lossless.
    """

    model_config = ConfigDict(extra="allow")

    source: str
    command: str | None = None
    model: str | None = None
    model_sha256: str | None = None
    tokenizer: str | None = None
    chat_template: str | None = None
    sampling: dict[str, Any] = {}
    forcing_string: str | None = None
    probe_schedule: str | None = None
    logprob_convention: str | None = None
    license: str | None = None
    stopwise_version: str | None = None
    notes: str | None = None
    float_precision: dict[str, Any] | None = None


@dataclass(frozen=True)
class Question:
    """One question as given to :func:`build_trace_set`."""

    question_id: str
    question: str | None = None
    reference: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class TraceSet:
    """Many questions times many chains, columnar.

    Attributes
    ----------
    name : str
        Short name (the directory name when read from disk).
    questions, chains : pyarrow.Table
        See :mod:`stopwise.traces.schema`. Chains are grouped by question in the
        order of ``questions`` and sorted by ``sample_id`` within a question.
    provenance : Provenance
    """

    name: str
    questions: pa.Table
    chains: pa.Table
    provenance: Provenance
    schema_version: int = SCHEMA_VERSION

    # --- sizes -----------------------------------------------------------------
    @property
    def n_questions(self) -> int:
        return self.questions.num_rows

    @property
    def n_chains(self) -> int:
        return self.chains.num_rows

    @cached_property
    def n_tokens(self) -> int:
        return int(self.column("n_tokens").sum())

    # --- fields ----------------------------------------------------------------
    def has(self, name: str) -> bool:
        """True when column ``name`` exists and is non-null for at least one chain."""
        if name not in self.chains.column_names:
            return False
        col = self.chains.column(name)
        return col.null_count < len(col)

    @cached_property
    def fields(self) -> list[str]:
        """The optional chain columns this set actually carries."""
        return [c for c in CHAIN_COLUMNS if self.has(c)]

    def require(self, *names: str, what: str) -> None:
        """Raise :class:`UnsupportedError` naming the missing columns that ``what`` needs."""
        missing = [n for n in names if not self.has(n)]
        if missing:
            raise UnsupportedError(
                f"{what} needs the field(s) {', '.join(missing)}, which trace set "
                f"'{self.name}' does not have (it has: {', '.join(self.fields)})",
                hint="collect traces with logprobs/probes (stopwise collect) or pick another policy",
            )

    # --- numpy views -----------------------------------------------------------
    @cached_property
    def chain_counts(self) -> np.ndarray:
        """Number of chains of each question, in question order."""
        qids = self.questions.column("question_id").to_pylist()
        pos = {q: i for i, q in enumerate(qids)}
        idx = np.fromiter((pos[q] for q in self.chains.column("question_id").to_pylist()), dtype=np.int64, count=self.n_chains)
        return np.bincount(idx, minlength=len(qids))

    @cached_property
    def question_offsets(self) -> np.ndarray:
        """Row offsets: chains of question i are rows offsets[i]:offsets[i+1]."""
        return np.concatenate([[0], np.cumsum(self.chain_counts)]).astype(np.int64)

    @cached_property
    def question_index(self) -> np.ndarray:
        """For each chain, the row of its question."""
        return np.repeat(np.arange(self.n_questions), self.chain_counts)

    @cached_property
    def chain_rank(self) -> np.ndarray:
        """For each chain, its index among its question's chains (draw order)."""
        return np.arange(self.n_chains) - np.repeat(self.question_offsets[:-1], self.chain_counts)

    def padded(self, name: str, fill: Any) -> np.ndarray:
        """A scalar chain column as a (questions, max chains) matrix padded with ``fill``."""
        values = self.column(name, fill=fill)
        width = int(self.chain_counts.max()) if self.n_questions else 0
        out = np.full((self.n_questions, width), fill, dtype=values.dtype if values.dtype != object else object)
        out[self.question_index, self.chain_rank] = values
        return out

    def column(self, name: str, fill: Any = None) -> np.ndarray:
        """A scalar chain column as numpy (nulls replaced by ``fill`` if given)."""
        col = self.chains.column(name)
        if fill is not None:
            col = pc.fill_null(col, fill)
        return col.to_numpy(zero_copy_only=False)

    def list_column(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A list chain column as (offsets of length n_chains+1, flat values).

        Values of chain j are ``values[offsets[j]:offsets[j+1]]``; a null list is empty.
        """
        arr = self.chains.column(name).combine_chunks()
        if len(arr) == 0:
            return np.zeros(1, dtype=np.int64), np.zeros(0)
        offsets = arr.offsets.to_numpy().astype(np.int64)
        # null lists may carry garbage extents in foreign files: make them empty
        if arr.null_count:
            lengths = np.diff(offsets)
            lengths[arr.is_null().to_numpy(zero_copy_only=False)] = 0
            values = pc.list_flatten(arr)  # skips nulls
            offsets = np.concatenate([[0], np.cumsum(lengths)])
        else:
            values = arr.flatten()
            offsets = offsets - offsets[0]
        return offsets, values.to_numpy(zero_copy_only=False)

    # --- identity --------------------------------------------------------------
    @cached_property
    def content_hash(self) -> str:
        """sha256 over the schema version and both tables in canonical row order.

        Independent of the on-disk encoding and of the provenance record, so the
        same traces imported twice hash the same.
        """
        return content_hash(self.questions, self.chains)

    def summary_counts(self) -> dict[str, int]:
        return {"questions": self.n_questions, "chains": self.n_chains, "tokens": self.n_tokens}


def _table_digest(table: pa.Table, sort_keys: list[tuple[str, str]]) -> bytes:
    table = table.sort_by(sort_keys).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).digest()


def content_hash(questions: pa.Table, chains: pa.Table) -> str:
    h = hashlib.sha256()
    h.update(f"stopwise-traces-v{SCHEMA_VERSION}".encode())
    h.update(_table_digest(questions, [("question_id", "ascending")]))
    h.update(_table_digest(chains, [("question_id", "ascending"), ("sample_id", "ascending")]))
    return h.hexdigest()


# --- building ---------------------------------------------------------------------


def _json(obj: Mapping[str, Any] | None) -> str | None:
    if not obj:
        return None
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)


def build_trace_set(
    name: str,
    questions: Sequence[Question],
    chains: Sequence[Mapping[str, Any]],
    provenance: Provenance,
    *,
    checker: Any = None,
) -> TraceSet:
    """Assemble a trace set from records and cluster its answers once.

    Parameters
    ----------
    name : str
    questions : sequence of Question
        In the order the set should keep. Every chain's ``question_id`` must be here.
    chains : sequence of mappings
        Keys from :data:`stopwise.traces.schema.CHAIN_COLUMNS` except the class
        columns, which are computed here: ``answer_class``/``probe_class`` by
        answer equivalence within the question (final and probe answers and the
        reference together), ``correct`` from the reference unless given.
    provenance : Provenance
    checker : stopwise.answers.AnswerChecker, optional
        Equivalence checker; a math-verify checker is created (and closed) if omitted.

    Raises
    ------
    TraceSetError
        On duplicate ids, chains of unknown questions, or misaligned lists.
    """
    from stopwise.answers import AnswerChecker, cluster_answers

    own_checker = checker is None
    if own_checker:
        checker = AnswerChecker()
    try:
        qpos: dict[str, int] = {}
        for i, q in enumerate(questions):
            if q.question_id in qpos:
                raise TraceSetError(f"duplicate question_id '{q.question_id}'")
            qpos[q.question_id] = i
        seen: set[tuple[str, int]] = set()
        by_q: list[list[dict[str, Any]]] = [[] for _ in questions]
        for rec in chains:
            qid = rec["question_id"]
            if qid not in qpos:
                raise TraceSetError(f"chain of unknown question_id '{qid}'")
            key = (qid, int(rec["sample_id"]))
            if key in seen:
                raise TraceSetError(f"duplicate chain: question_id '{qid}', sample_id {key[1]}")
            seen.add(key)
            by_q[qpos[qid]].append(dict(rec))

        q_rows: dict[str, list[Any]] = {f.name: [] for f in QUESTION_SCHEMA}
        c_rows: list[dict[str, Any]] = []
        for q, recs in zip(questions, by_q):
            recs.sort(key=lambda r: int(r["sample_id"]))
            answers: list[str | None] = []
            for r in recs:
                _check_aligned(q.question_id, r)
                answers.append(r.get("answer"))
                answers.extend(r.get("probe_answer") or [])
            cl = cluster_answers(answers, checker, reference=q.reference)
            ids = cl.ids.tolist()
            k = 0
            for r in recs:
                r["answer_class"] = ids[k]
                k += 1
                n_probes = len(r.get("probe_answer") or [])
                if r.get("probe_position") is not None:
                    r["probe_class"] = ids[k : k + n_probes]
                k += n_probes
                if r.get("correct") is None and q.reference is not None:
                    r["correct"] = bool(r["answer_class"] != MISSING and r["answer_class"] == cl.reference_id)
                if isinstance(r.get("metadata"), Mapping):
                    r["metadata"] = _json(r["metadata"])
                c_rows.append(r)
            q_rows["question_id"].append(q.question_id)
            q_rows["question"].append(q.question)
            q_rows["reference"].append(q.reference)
            q_rows["reference_class"].append(int(cl.reference_id))
            q_rows["n_classes"].append(len(cl.representatives))
            q_rows["class_answers"].append(list(cl.representatives))
            q_rows["metadata"].append(_json(q.metadata))
    finally:
        if own_checker:
            checker.close()

    chain_cols = {cname: [r.get(cname) for r in c_rows] for cname in CHAIN_COLUMNS}
    return trace_set_from_columns(name, q_rows, chain_cols, provenance)


def trace_set_from_columns(
    name: str,
    questions: Mapping[str, Any],
    chains: Mapping[str, Any],
    provenance: Provenance,
) -> TraceSet:
    """A trace set from columns whose answer classes are already assigned (no clustering).

    ``questions`` and ``chains`` map column names of
    :data:`~stopwise.traces.schema.QUESTION_SCHEMA` and
    :data:`~stopwise.traces.schema.CHAIN_COLUMNS` to Python lists or Arrow
    arrays; optional columns that are absent are stored as nulls. Rows must
    already be in the set's order (chains grouped by question, by sample_id).

    Raises
    ------
    TraceSetError
        A required column is missing or a column has values of the wrong type.
    """
    n_q = len(questions.get("question_id", ()))
    n_c = len(chains.get("question_id", ()))
    q_cols = [_column(questions, f.name, f.type, f.nullable, n_q, "questions") for f in QUESTION_SCHEMA]
    c_cols = [_column(chains, f.name, f.type, f.nullable, n_c, "chains") for f in CHAIN_SCHEMA]
    qt = pa.Table.from_arrays(q_cols, schema=QUESTION_SCHEMA)
    ct = pa.Table.from_arrays(c_cols, schema=CHAIN_SCHEMA)
    return TraceSet(name=name, questions=qt, chains=ct, provenance=provenance)


def _column(cols: Mapping[str, Any], name: str, typ: pa.DataType, nullable: bool, n: int, table: str) -> pa.Array:
    if name not in cols:
        if not nullable:
            raise TraceSetError(f"{table}: required column '{name}' is missing")
        return pa.nulls(n, type=typ)
    vals = cols[name]
    if isinstance(vals, (pa.Array, pa.ChunkedArray)):
        arr = vals if vals.type.equals(typ) else vals.cast(typ)
    else:
        try:
            arr = pa.array(vals, type=typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise TraceSetError(f"{table}: column '{name}' has values of the wrong type: {exc}") from exc
    if len(arr) != n:
        raise TraceSetError(f"{table}: column '{name}' has {len(arr)} values for {n} rows")
    if not nullable and arr.null_count:
        raise TraceSetError(f"{table}: required column '{name}' has nulls")
    return arr


def _check_aligned(qid: str, r: Mapping[str, Any]) -> None:
    where = f"question_id '{qid}', sample_id {r.get('sample_id')}"
    n = r.get("n_tokens")
    if n is None or int(n) < 0:
        raise TraceSetError(f"{where}: n_tokens must be a non-negative integer")
    for cname in ("tokens", "token_logprobs", "top_logprobs", "top_tokens", "entropy", "token_confidence"):
        v = r.get(cname)
        if v is not None and len(v) != int(n):
            raise TraceSetError(f"{where}: '{cname}' has {len(v)} entries for {n} tokens")
    lens = {c: len(r[c]) for c in PROBE_COLUMNS if c != "probe_class" and r.get(c) is not None}
    if len(set(lens.values())) > 1:
        raise TraceSetError(f"{where}: probe lists differ in length: {lens}")
    pos = r.get("probe_position")
    if pos is not None:
        if any(p < 0 or p > int(n) for p in pos):
            raise TraceSetError(f"{where}: probe_position outside 0..n_tokens ({n})")
        if any(b < a for a, b in zip(pos, pos[1:])):
            raise TraceSetError(f"{where}: probe_position must be sorted ascending")
