"""Which answer to return from k chains: voting and selection rules side by side.

For each question and each k (the first k logged chains), every rule returns
one answer class; the report gives each rule's accuracy at each k on the whole
set (no calibration: the rules have no threshold to certify).

``majority``            plain self-consistency: most votes, ties to the earliest.
``confidence_weighted`` DeepConf-style: each vote weighted by its chain's lowest
                        sliding-window token confidence (window: 1/8 of the
                        median chain, at least 16 tokens), sets with token confidence.
``confidence_top10``    DeepConf-low's filter: only the 10% most confident chains
                        (at least one) vote, weighted.
``reward_weighted``     each vote weighted by the chain's reward score, shifted to be
                        positive per question (sets with rewards).
``best_of_n``           the answer of the chain with the highest reward.
``best_of_majority``    Best-of-Majority (arXiv 2510.03199) for one answer: among the
                        answers given by at least ``min_share`` of the k chains, the
                        one whose best chain has the highest reward.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stopwise.errors import ConfigError
from stopwise.policies.base import MISSING
from stopwise.policies.features import lowest_window_mean
from stopwise.policies.voting import vote

__all__ = ["RULES", "aggregation_report", "chain_confidence"]

RULES = ("majority", "confidence_weighted", "confidence_top10", "reward_weighted", "best_of_n", "best_of_majority")


def chain_confidence(ts) -> np.ndarray:  # noqa: ANN001 - TraceSet
    """Each chain's lowest sliding-window mean token confidence (DeepConf's group confidence); NaN without tokens.

    The window is 1/8 of the median chain of the training role (as for ``deepconf_online``), never of the
    questions the rules are compared on; with no training-role chain (a tiny set), 16 tokens."""
    from stopwise.policies.deepconf import training_role_median

    offsets, values = ts.list_column("token_confidence")
    med = training_role_median(ts, np.diff(offsets))
    window = max(16, int((med or 0.0) // 8))
    out = np.full(ts.n_chains, np.nan)
    for j in range(ts.n_chains):
        v = np.asarray(values[offsets[j]:offsets[j + 1]], dtype=np.float64)
        if len(v):
            out[j] = lowest_window_mean(v, window)
    return out


def _pick(rule: str, classes: np.ndarray, conf: np.ndarray | None, reward: np.ndarray | None, min_share: float) -> int:
    if rule == "majority":
        return vote(classes)
    if rule in ("confidence_weighted", "confidence_top10"):
        w = np.nan_to_num(conf, nan=0.0)
        if rule == "confidence_top10":
            keep = np.zeros(len(classes), bool)
            keep[np.argsort(-w, kind="stable")[: max(1, int(np.ceil(0.1 * len(classes))))]] = True
            return vote(np.where(keep, classes, MISSING), w)
        return vote(classes, w)
    r = np.nan_to_num(reward, nan=-np.inf)
    if rule == "reward_weighted":
        finite = np.isfinite(r)
        w = np.where(finite, r - (r[finite].min() if finite.any() else 0.0) + 1e-9, 0.0)
        return vote(classes, w)
    answered = classes != MISSING
    if not answered.any():
        return MISSING
    if rule == "best_of_n":
        return int(classes[answered][np.argmax(r[answered])])
    if rule == "best_of_majority":
        vals, counts = np.unique(classes[answered], return_counts=True)
        kept = vals[counts >= min_share * len(classes)]
        if len(kept) == 0:
            return vote(classes)
        best = {int(c): float(np.max(r[classes == c])) for c in kept}
        return max(best, key=lambda c: best[c])
    raise ConfigError(f"unknown aggregation rule '{rule}'", hint=f"use one of {RULES}")


def aggregation_report(ts, *, ks: tuple[int, ...] | None = None, min_share: float = 0.2) -> dict[str, Any]:  # noqa: ANN001
    """Accuracy of every applicable rule at each k; rows per rule."""
    if not ts.has("correct"):
        raise ConfigError(f"trace set '{ts.name}' has no labels (correct); the rules are compared on accuracy")
    most = int(ts.chain_counts.max()) if ts.n_questions else 0
    if most < 2:
        raise ConfigError(f"trace set '{ts.name}' has one chain per question; there is nothing to aggregate")
    if ks is None:
        ks = tuple(k for k in (1, 2, 4, 8, 16, 32, 64) if k < most) + (most,)
    rules = ["majority"]
    conf = reward = None
    if ts.has("token_confidence"):
        conf = chain_confidence(ts)
        rules += ["confidence_weighted", "confidence_top10"]
    if ts.has("reward"):
        reward = np.asarray(ts.column("reward", fill=np.nan), dtype=np.float64)
        rules += ["reward_weighted", "best_of_n", "best_of_majority"]
    klass = np.asarray(ts.column("answer_class", fill=MISSING), dtype=np.int64)
    ref = np.asarray(ts.questions.column("reference_class").to_numpy(zero_copy_only=False), dtype=np.int64)
    off = np.asarray(ts.question_offsets)
    acc = {rule: [] for rule in rules}
    for k in ks:
        hits = {rule: 0 for rule in rules}
        for q in range(ts.n_questions):
            lo, hi = int(off[q]), min(int(off[q + 1]), int(off[q]) + k)
            c = klass[lo:hi]
            for rule in rules:
                a = _pick(rule, c, None if conf is None else conf[lo:hi], None if reward is None else reward[lo:hi], min_share)
                hits[rule] += int(a != MISSING and a == ref[q])
        for rule in rules:
            acc[rule].append(hits[rule] / max(ts.n_questions, 1))
    return {"trace_set": ts.name, "ks": list(ks), "min_share": min_share, "n_questions": ts.n_questions,
            "rows": [{"rule": rule, "accuracy": acc[rule]} for rule in rules]}
