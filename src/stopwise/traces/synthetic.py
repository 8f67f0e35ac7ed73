"""Synthetic trace sets for tests and speed benchmarks. Never a real result.

The generator draws, per question, a latent "true" class and per chain a final
answer, a length, token-level scalars and probes whose answers converge to the
chain's final answer at a random point. Everything is seeded.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from stopwise.traces.model import Provenance, TraceSet, trace_set_from_columns
from stopwise.traces.schema import CHAIN_COLUMNS, QUESTION_SCHEMA


def synthetic_trace_set(
    n_questions: int = 50,
    n_chains: int = 4,
    *,
    mean_tokens: int = 400,
    probe_every: int = 32,
    n_classes: int = 4,
    p_correct: float = 0.6,
    p_missing: float = 0.05,
    top_k: int = 5,
    with_tokens: bool = True,
    with_text_lists: bool = False,
    seed: int = 0,
    name: str = "synthetic",
    id_prefix: str = "q",
) -> TraceSet:
    """A random trace set with every numeric field filled (``tokens`` strings optional).

    Parameters
    ----------
    n_questions, n_chains : int
        Size. Chain counts vary per question when ``n_chains`` is negative
        (then between 1 and ``-n_chains``).
    mean_tokens : int
        Mean chain length (geometric-ish, at least 8).
    probe_every : int
        Probes at every multiple of this position, plus one at the end.
    with_tokens : bool
        Fill the per-position float columns (logprobs, entropy, confidence).
    id_prefix : str
        Question ids are this prefix and the question's index (two sets with
        different prefixes share no question).

    Examples
    --------
    >>> ts = synthetic_trace_set(3, 2, seed=1)
    >>> ts.n_chains
    6
    """
    rng = np.random.default_rng(seed)
    q_rows = {f.name: [] for f in QUESTION_SCHEMA}
    c_rows = {name: [] for name in CHAIN_COLUMNS}
    for qi in range(n_questions):
        qid = f"{id_prefix}{qi:05d}"
        truth = 0
        k = n_chains if n_chains > 0 else int(rng.integers(1, -n_chains + 1))
        q_rows["question_id"].append(qid)
        q_rows["question"].append(f"synthetic question {qi}")
        q_rows["reference"].append("0")
        q_rows["reference_class"].append(truth)
        q_rows["n_classes"].append(n_classes)
        q_rows["class_answers"].append([str(c) for c in range(n_classes)])
        q_rows["metadata"].append(None)
        difficulty = rng.uniform(0, 1)
        for s in range(k):
            n = int(max(8, rng.gamma(2.0, mean_tokens / 2.0)))
            u = rng.uniform()
            if u < p_missing:
                final = -1
            elif rng.uniform() < p_correct * (1.2 - difficulty):
                final = truth
            else:
                final = int(rng.integers(1, n_classes))
            positions = list(range(probe_every, n, probe_every)) + [n]
            settle = rng.uniform(0.1, 1.0) * n  # probe answers equal final after this point
            classes = []
            for p in positions:
                if p >= settle:
                    classes.append(final)
                elif rng.uniform() < 0.3:
                    classes.append(-1)
                else:
                    classes.append(int(rng.integers(0, n_classes)))
            lp = (-rng.exponential(0.4 + difficulty, size=len(positions))).astype(np.float32)
            c_rows["question_id"].append(qid)
            c_rows["sample_id"].append(s)
            c_rows["n_tokens"].append(n)
            c_rows["finish_reason"].append("stop" if rng.uniform() > 0.1 else "length")
            c_rows["text"].append(None)
            c_rows["answer"].append(None if final < 0 else str(final))
            c_rows["answer_class"].append(final)
            c_rows["correct"].append(bool(final == truth))
            c_rows["reward"].append(float(rng.normal(1.0 if final == truth else 0.0, 1.0)))
            if with_tokens:
                conf = np.clip(rng.normal(2.5 - difficulty, 0.6, size=n), 0.0, None).astype(np.float32)
                tlp = (-rng.exponential(0.3, size=n)).astype(np.float32)
                ent = rng.exponential(0.5, size=n).astype(np.float32)
                top = np.sort(-rng.exponential(1.5, size=(n, top_k)), axis=1)[:, ::-1].astype(np.float32)
                top[:, 0] = np.maximum(top[:, 0], tlp)
                c_rows["token_logprobs"].append(tlp)
                c_rows["token_confidence"].append(conf)
                c_rows["entropy"].append(ent)
                c_rows["top_logprobs"].append(list(top))
            else:
                for col in ("token_logprobs", "token_confidence", "entropy", "top_logprobs"):
                    c_rows[col].append(None)
            c_rows["tokens"].append([f"t{j % 50}" for j in range(n)] if with_text_lists else None)
            c_rows["top_tokens"].append(None)
            c_rows["probe_position"].append(positions)
            c_rows["probe_answer"].append([None if c < 0 else str(c) for c in classes])
            c_rows["probe_class"].append(classes)
            c_rows["probe_logprob"].append(lp)
            c_rows["probe_cost"].append([24] * len(positions))
            c_rows["probe_cue"].append(["schedule"] * len(positions))
            first = next((p for p, c in zip(positions, classes) if c >= 0), -1)
            c_rows["first_candidate_position"].append(first)
            c_rows["metadata"].append(None)
    cols = {
        cname: _float_lists(c_rows[cname]) if typ == pa.list_(pa.float32()) else c_rows[cname]
        for cname, (typ, _) in CHAIN_COLUMNS.items()
    }
    prov = Provenance(source="synthetic", notes="random synthetic traces for tests; not a real result", sampling={"seed": seed})
    return trace_set_from_columns(name, q_rows, cols, prov)


def _float_lists(vals: list) -> pa.Array:
    """Build a list<float32> array fast from numpy chunks (None for nulls)."""
    lengths = np.array([0 if v is None else len(v) for v in vals], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.concatenate([np.asarray(v, dtype=np.float32) for v in vals if v is not None] or [np.zeros(0, np.float32)])
    mask = np.array([v is None for v in vals])
    arr = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.float32()), mask=pa.array(mask) if mask.any() else None)
    return arr
