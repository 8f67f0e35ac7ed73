"""Conformal answer sets and conformal selection over trace sets (the glue to :mod:`stopwise.stats.conformal`).

Per question, the candidates are the distinct answer classes of its chains,
each with its share of the chains (a chain without an answer adds to the
"none of these" element, as does any mass not on a candidate). The truth is
the reference class when it is a candidate, else "none of these", so the
coverage guarantee needs no condition on the model being right.

Selection releases a question's majority answer when BH on conformal p-values
rejects "this answer is wrong", with the vote share of the majority answer as
the confidence score. Both calibrate on the hashed calibration half and report
on the test half (:func:`stopwise.stats.split.split_mask`).

Examples
--------
>>> from stopwise.traces.synthetic import synthetic_trace_set
>>> ts = synthetic_trace_set(60, 6, seed=1)
>>> out = answer_sets(ts, alpha=0.2)
>>> 0.0 <= out["test_coverage"] <= 1.0 and out["mean_size"] >= 1.0
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stopwise.errors import ConfigError
from stopwise.policies.base import MISSING
from stopwise.policies.multi import chain_matrix
from stopwise.policies.voting import vote_prefixes, vote_rows
from stopwise.stats.conformal import (
    NONE,
    benjamini_hochberg,
    conformal_pvalues,
    conformal_quantile,
    nonconformity,
    prediction_sets,
)
from stopwise.stats.split import split_mask

__all__ = ["SCORES", "SELECTION_SCORES", "answer_sets", "candidates", "question_scores", "select_answers", "selection_scores", "validate_selection", "validate_sets"]


def candidates(ts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # noqa: ANN001 - TraceSet
    """``(probs, classes, labels)``: per question, candidate shares (Q, K), their classes (Q, K; -1 padding)
    and the index of the reference class among them (``NONE`` when it is not a candidate or unknown)."""
    cm = chain_matrix(ts)
    q = len(cm.counts)
    ref = np.asarray(ts.questions.column("reference_class").to_numpy(zero_copy_only=False), dtype=np.int64)
    per_q: list[list[tuple[int, int]]] = []
    for i in range(q):
        row = cm.klass[i, : int(cm.counts[i])]
        vals, counts = np.unique(row[row != MISSING], return_counts=True)
        order = np.argsort(-counts, kind="stable")
        per_q.append([(int(vals[j]), int(counts[j])) for j in order])
    k = max((len(c) for c in per_q), default=0)
    probs = np.zeros((q, max(k, 1)))
    classes = np.full((q, max(k, 1)), MISSING, dtype=np.int64)
    labels = np.full(q, NONE, dtype=np.int64)
    for i, cands in enumerate(per_q):
        n = max(int(cm.counts[i]), 1)
        for j, (c, cnt) in enumerate(cands):
            probs[i, j] = cnt / n
            classes[i, j] = c
            if c == ref[i] and ref[i] != MISSING:
                labels[i] = j
    return probs, classes, labels


def _halves(ts, calib: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    if calib is None:
        calib = split_mask(ts.questions.column("question_id").to_pylist())
    if not ts.has("correct"):
        raise ConfigError(f"trace set '{ts.name}' has no labels (correct); conformal sets and selection need them")
    return np.asarray(calib, dtype=bool), ~np.asarray(calib, dtype=bool)


def answer_sets(ts, *, alpha: float = 0.1, score: str = "lac", calib: np.ndarray | None = None,  # noqa: ANN001
                cands: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Calibrate answer sets on the calibration questions; coverage and size on the rest.

    ``cands`` is :func:`candidates` of ``ts`` when the caller already has it (many draws of one set).
    """
    cal, test = _halves(ts, calib)
    probs, classes, labels = cands if cands is not None else candidates(ts)
    qhat = conformal_quantile(nonconformity(probs[cal], labels[cal], score), alpha)
    sets = prediction_sets(probs[test], qhat, score)
    k = probs.shape[1]
    real = np.concatenate([classes[test] != MISSING, np.ones((int(test.sum()), 1), dtype=bool)], axis=1)
    sets &= real  # padding is never in a set
    col = np.where(labels[test] == NONE, k, labels[test])
    covered = sets[np.arange(len(col)), col]
    size = sets.sum(axis=1)
    # the decision rule on top of the sets: answer when the set is one real answer, else abstain or escalate
    single = (size == 1) & ~sets[:, k]
    single_right = single & covered
    return {
        "trace_set": ts.name, "alpha": alpha, "score": score, "qhat": qhat,
        "n_calibration": int(cal.sum()), "n_test": int(test.sum()),
        "test_coverage": float(covered.mean()) if len(covered) else float("nan"),
        "mean_size": float(size.mean()) if len(size) else float("nan"),
        "singleton_share": float((size == 1).mean()) if len(size) else float("nan"),
        "none_share": float(sets[:, k].mean()) if len(size) else float("nan"),
        "answered_share": float(single.mean()) if len(size) else float("nan"),
        "answered_accuracy": float(single_right.sum() / single.sum()) if single.any() else None,
        "truth_not_a_candidate": float((labels == NONE).mean()),
        "guarantee": "marginal coverage >= 1 - alpha over exchangeable questions; 'none of these' is an element",
    }


SELECTION_SCORES = ("auto", "vote_share", "probe_agreement")
# the confidence scores of a majority answer that question_scores computes (selective answering, cascades)
SCORES = ("vote_share", "vote_margin", "probe_agreement", "probe_confidence")


def selection_scores(ts, score: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # noqa: ANN001
    """``(answer, score, wrong)`` per question: the majority answer, its confidence score, and whether it is wrong.

    ``vote_share``: share of the question's chains that give the majority answer.
    ``probe_agreement``: share of the probes (with an answer) of the chains giving
    the majority answer that already gave it. ``auto``: vote share where
    questions have several chains, else probe agreement.
    """
    if score not in SELECTION_SCORES:
        raise ConfigError(f"unknown selection score '{score}'", hint=f"use one of {SELECTION_SCORES}")
    cm = chain_matrix(ts)
    answer = vote_rows(cm.klass)
    n = np.maximum(cm.counts, 1)
    if score == "auto":
        score = "vote_share" if ts.n_questions and int(cm.counts.max()) > 1 else "probe_agreement"
    if score == "vote_share":
        conf = (cm.klass == answer[:, None]).sum(axis=1) / n
    else:
        from stopwise.policies.single import probe_arrays

        pa = probe_arrays(ts)
        qi = np.asarray(ts.question_index, dtype=np.int64)
        maj = answer[qi[pa.chain]] if len(pa.chain) else np.zeros(0, np.int64)
        final = np.asarray(ts.column("answer_class", fill=MISSING), dtype=np.int64)
        use = (pa.klass != MISSING) & (final[pa.chain] == maj)
        agree = np.bincount(qi[pa.chain][use], weights=(pa.klass[use] == maj[use]).astype(float), minlength=ts.n_questions)
        total = np.bincount(qi[pa.chain][use], minlength=ts.n_questions)
        conf = np.where(total > 0, agree / np.maximum(total, 1), 0.0)
    conf = np.where(answer == MISSING, 0.0, conf)
    ref = np.asarray(ts.questions.column("reference_class").to_numpy(zero_copy_only=False), dtype=np.int64)
    wrong = (answer != ref) | (answer == MISSING) | (ref == MISSING)
    return answer, conf.astype(np.float64), wrong


def question_scores(ts) -> tuple[dict[str, np.ndarray], np.ndarray]:  # noqa: ANN001 - TraceSet
    """Every score the set can feed, per question, and whether the majority answer is wrong."""
    answer, share, wrong = selection_scores(ts, "vote_share")
    out: dict[str, np.ndarray] = {}
    cm = chain_matrix(ts)
    if ts.n_questions and int(cm.counts.max()) > 1:
        out["vote_share"] = share
        last = np.maximum(cm.counts - 1, 0)
        pv = vote_prefixes(cm.klass)
        n = np.maximum(cm.counts, 1)
        top = pv.top[np.arange(len(last)), last] if cm.width else np.zeros(len(last))
        run = pv.runner_up[np.arange(len(last)), last] if cm.width else np.zeros(len(last))
        out["vote_margin"] = np.where(answer == MISSING, 0.0, (top - run) / n)
    if ts.has("probe_class") and len(ts.list_column("probe_class")[1]):  # sets collected with no probes have empty lists
        out["probe_agreement"] = selection_scores(ts, "probe_agreement")[1]
        if ts.has("probe_logprob"):
            from stopwise.policies.single import probe_arrays

            pa = probe_arrays(ts)
            qi = np.asarray(ts.question_index, dtype=np.int64)[pa.chain]
            final = np.asarray(ts.column("answer_class", fill=MISSING), dtype=np.int64)
            use = (pa.klass != MISSING) & (final[pa.chain] == answer[qi]) & np.isfinite(pa.logprob)
            if use.any():
                tot = np.bincount(qi[use], weights=np.exp(pa.logprob[use]), minlength=ts.n_questions)
                cnt = np.bincount(qi[use], minlength=ts.n_questions)
                out["probe_confidence"] = np.where(cnt > 0, tot / np.maximum(cnt, 1), 0.0)
    return out, wrong


def select_answers(ts, *, q: float = 0.1, score: str = "auto", calib: np.ndarray | None = None,  # noqa: ANN001
                   scored: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Release test-half answers by BH on conformal p-values; report the released share and the realized FDP.

    ``scored`` is :func:`selection_scores` of ``ts`` when the caller already has it (many draws of one set).
    """
    cal, test = _halves(ts, calib)
    answer, score_v, wrong = scored if scored is not None else selection_scores(ts, score)
    p = conformal_pvalues(score_v[cal], wrong[cal], score_v[test])
    released = benjamini_hochberg(p, q)
    n_rel = int(released.sum())
    fdp = float(wrong[test][released].mean()) if n_rel else 0.0
    return {
        "trace_set": ts.name, "q": q, "score": score, "n_calibration": int(cal.sum()), "n_test": int(test.sum()),
        "released": n_rel, "released_share": n_rel / max(int(test.sum()), 1), "test_fdp": fdp,
        "accuracy_all": float(1 - wrong[test].mean()) if test.any() else float("nan"),
        "guarantee": "FDR <= q in expectation over calibration and test draws (marginal, not per batch)",
        "released_questions": [str(x) for x in np.asarray(ts.questions.column("question_id").to_pylist())[test][released]],
    }


def _random_halves(n: int, draws: int, seed: int):  # noqa: ANN202
    rng = np.random.default_rng(seed)
    for _ in range(draws):
        mask = np.zeros(n, dtype=bool)
        mask[rng.permutation(n)[: n // 2]] = True
        yield mask


def validate_sets(ts, *, alpha: float = 0.1, score: str = "lac", draws: int = 200, seed: int = 0) -> dict[str, Any]:  # noqa: ANN001
    """Coverage of conformal sets over ``draws`` random calibration halves, against the top-1 answer as a control.

    The guarantee is marginal (an expectation over calibration and test
    draws), so the check is on the mean coverage; the control (the majority
    answer alone, no calibration) must fall short wherever the model's
    accuracy is below ``1 - alpha``.
    """
    covs, top1 = [], []
    cands = candidates(ts)
    labels = cands[2]
    for cal in _random_halves(ts.n_questions, draws, seed):
        out = answer_sets(ts, alpha=alpha, score=score, calib=cal, cands=cands)
        covs.append(out["test_coverage"])
        top1.append(float((labels[~cal] == 0).mean()))
    covs_a, top1_a = np.asarray(covs), np.asarray(top1)
    se = covs_a.std(ddof=1) / np.sqrt(len(covs_a)) if len(covs_a) > 1 else 0.0
    se1 = top1_a.std(ddof=1) / np.sqrt(len(top1_a)) if len(top1_a) > 1 else 0.0
    return {
        "trace_set": ts.name, "alpha": alpha, "score": score, "draws": draws,
        "mean_coverage": float(covs_a.mean()), "coverage_ci_high": float(covs_a.mean() + 2.58 * se),
        "consistent": bool(covs_a.mean() + 2.58 * se >= 1 - alpha),
        "control_top1_coverage": float(top1_a.mean()),
        "control_consistent": bool(top1_a.mean() + 2.58 * se1 >= 1 - alpha),
    }


def validate_selection(ts, *, q: float = 0.1, score: str = "auto", draws: int = 200, seed: int = 0) -> dict[str, Any]:  # noqa: ANN001
    """FDR of conformal selection over random calibration halves, against releasing every answer.

    The guarantee is an expectation, so the check is on the mean FDP. The
    negative control releases every test answer (no selection): its FDP is the
    error rate, above ``q`` wherever the model errs more often than ``q``.
    """
    scored = selection_scores(ts, score)
    wrong = scored[2]
    fdps, release_all = [], []
    for cal in _random_halves(ts.n_questions, draws, seed):
        fdps.append(select_answers(ts, q=q, score=score, calib=cal, scored=scored)["test_fdp"])
        release_all.append(float(wrong[~cal].mean()))
    f, nv = np.asarray(fdps), np.asarray(release_all)
    se = f.std(ddof=1) / np.sqrt(len(f)) if len(f) > 1 else 0.0
    sen = nv.std(ddof=1) / np.sqrt(len(nv)) if len(nv) > 1 else 0.0
    return {
        "trace_set": ts.name, "q": q, "draws": draws, "fdr": float(f.mean()), "fdr_ci_low": float(f.mean() - 2.58 * se),
        "consistent": bool(f.mean() - 2.58 * se <= q),
        "control_fdr": float(nv.mean()), "control_consistent": bool(nv.mean() - 2.58 * sen <= q),
    }
