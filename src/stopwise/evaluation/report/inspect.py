"""``stopwise inspect``: what a trace set holds and which policies it feeds."""

from __future__ import annotations

from typing import Any

import numpy as np

from stopwise.traces.model import TraceSet


def summarize(ts: TraceSet) -> dict[str, Any]:
    """A plain dict summary of ``ts`` (counts, fields, probes, accuracy, supported families)."""
    from stopwise.policies.registry import family_names, get_family
    from stopwise.policies.voting import vote_rows

    n_tok = ts.column("n_tokens").astype(np.int64)
    out: dict[str, Any] = {
        "name": ts.name,
        "content_hash": ts.content_hash,
        "schema_version": ts.schema_version,
        "questions": ts.n_questions,
        "chains": ts.n_chains,
        "chains_per_question": _dist(ts.chain_counts),
        "tokens": int(n_tok.sum()),
        "tokens_per_chain": _dist(n_tok),
        "fields": ts.fields,
        "provenance": ts.provenance.model_dump(exclude_none=True),
    }
    if ts.has("probe_position"):
        offs, pos = ts.list_column("probe_position")
        per_chain = np.diff(offs)
        out["probes_per_chain"] = _dist(per_chain)
        _, cls = ts.list_column("probe_class")
        out["probes_with_answer"] = float((cls >= 0).mean()) if len(cls) else 0.0
    if ts.has("first_candidate_position"):
        first = ts.column("first_candidate_position", fill=-1).astype(np.int64)
        has = (first >= 0) & (n_tok > 0)
        out["chains_with_candidate"] = float(has.mean())
        if has.any():
            out["first_candidate_position"] = _dist(first[has])
            out["first_candidate_share"] = _dist(first[has] / n_tok[has])
    answered = ts.column("answer_class", fill=-1) >= 0
    out["chains_with_answer"] = float(answered.mean()) if ts.n_chains else 0.0
    if ts.has("correct"):
        correct = ts.column("correct", fill=False).astype(float)
        qi = ts.question_index
        per_q = np.bincount(qi, weights=correct, minlength=ts.n_questions) / np.maximum(ts.chain_counts, 1)
        out["accuracy_one_chain"] = float(per_q.mean())
        ref = ts.questions.column("reference_class").to_numpy()
        vote = vote_rows(ts.padded("answer_class", -1))
        out["accuracy_majority_vote"] = float(((vote == ref) & (vote >= 0)).mean())
    support = {}
    for name in family_names():
        try:
            fam = get_family(name).fit_to(ts)
            why = fam.supports(ts)
        except Exception as exc:  # a family that cannot even be built says why
            why = str(exc)
        support[name] = why or "yes"
    out["families"] = support
    return out


def _dist(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return {"mean": 0.0, "median": 0.0, "min": 0.0, "max": 0.0}
    return {
        "mean": float(x.mean()),
        "median": float(np.median(x)),
        "min": float(x.min()),
        "max": float(x.max()),
    }
