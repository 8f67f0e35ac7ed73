"""The columnar schema of a trace set (Arrow), and its version.

A trace set is two tables:

``questions``: one row per question, in the set's canonical order.
    question_id (str), question (str|null), reference (str|null),
    reference_class (int32: class id of the reference answer, -1 if none),
    n_classes (int32: number of distinct answer classes of the question),
    class_answers (list<str>: a representative string per class id),
    metadata (str: JSON of extra fields).

``chains``: one row per sampled chain, grouped by question in question order,
then by ``sample_id``. Per-position columns are lists aligned with the chain's
generated tokens; probe columns are lists aligned with each other, sorted by
position. Every optional column may be null for a chain (or absent from a set):
a policy that needs it says so.

Logprob convention: ``token_logprobs``/``top_logprobs`` are raw log-softmax
values at temperature 1 whatever the sampling temperature, unless the
provenance's ``logprob_convention`` says otherwise. ``token_confidence`` is
DeepConf's C_i = -(1/k) * sum of the top-k logprobs (k = 20 where collected).
Answer classes: integer ids per question, assigned once at import by answer
equivalence; -1 (:data:`MISSING`) means "no answer" and agrees with nothing.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1
MISSING = -1

QUESTION_SCHEMA = pa.schema(
    [
        pa.field("question_id", pa.string(), nullable=False),
        pa.field("question", pa.string()),
        pa.field("reference", pa.string()),
        pa.field("reference_class", pa.int32(), nullable=False),
        pa.field("n_classes", pa.int32(), nullable=False),
        pa.field("class_answers", pa.list_(pa.string())),
        pa.field("metadata", pa.string()),
    ]
)

# name -> (arrow type, what it is). Order here is the column order on disk.
CHAIN_COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "question_id": (pa.string(), "id of the question this chain answers"),
    "sample_id": (pa.int32(), "index of the chain among its question's samples"),
    "n_tokens": (pa.int32(), "number of generated tokens"),
    "finish_reason": (pa.string(), "stop, length, ... (null if unknown)"),
    "text": (pa.string(), "generated text"),
    "answer": (pa.string(), "extracted final answer (null if none)"),
    "answer_class": (pa.int32(), "class id of the final answer (-1 missing)"),
    "correct": (pa.bool_(), "final answer equals the reference (null if no reference)"),
    "reward": (pa.float64(), "outcome reward score (null if none)"),
    "tokens": (pa.list_(pa.string()), "generated token strings"),
    "token_logprobs": (pa.list_(pa.float32()), "logprob of each chosen token"),
    "top_logprobs": (pa.list_(pa.list_(pa.float32())), "top-k logprobs per position, descending"),
    "top_tokens": (pa.list_(pa.list_(pa.string())), "top-k token strings per position"),
    "entropy": (pa.list_(pa.float32()), "full-vocabulary entropy per position (nats)"),
    "token_confidence": (pa.list_(pa.float32()), "DeepConf C_i = -mean(top-k logprobs)"),
    "probe_position": (pa.list_(pa.int32()), "tokens generated when the probe was taken"),
    "probe_answer": (pa.list_(pa.string()), "answer at the probe (null if none)"),
    "probe_class": (pa.list_(pa.int32()), "class id of the probe answer (-1 missing)"),
    "probe_logprob": (pa.list_(pa.float32()), "sum logprob of the probe answer tokens (NaN if unknown)"),
    "probe_cost": (pa.list_(pa.int32()), "prefill + decode tokens the probe cost (0 for text probes)"),
    "probe_cue": (pa.list_(pa.string()), "what triggered the probe (schedule, blank_line, wait, ...)"),
    "first_candidate_position": (pa.int32(), "token position where the first candidate answer ends (-1 none)"),
    "metadata": (pa.string(), "JSON of extra fields kept from the source"),
}

REQUIRED_CHAIN_COLUMNS = ("question_id", "sample_id", "n_tokens", "answer", "answer_class")
PROBE_COLUMNS = ("probe_position", "probe_answer", "probe_class", "probe_logprob", "probe_cost", "probe_cue")

CHAIN_SCHEMA = pa.schema(
    [
        pa.field(name, typ, nullable=name not in REQUIRED_CHAIN_COLUMNS or name == "answer")
        for name, (typ, _) in CHAIN_COLUMNS.items()
    ]
)
