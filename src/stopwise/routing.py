"""Cascades from a weak to a strong model, certified on the accuracy lost against always asking the strong one.

The weak model answers first. A router sees only what exists at that moment,
the prompt and the weak model's response, and scores how likely the weak answer
is right. The cascade keeps the weak answer when the score reaches a threshold
``t`` and otherwise escalates to the strong model. Correctness columns are
labels for training and calibration, never router inputs.

Loss of a question at threshold ``t``: the cascade kept the weak answer, the
weak answer is wrong and the strong model's is right (the accuracy the
cascade loses against always-strong). ``t`` runs over a grid from 1.0 (never
keep, always escalate: no loss) down to 0; Learn-then-Test picks the lowest
threshold whose loss is certified at most ``epsilon`` with probability
``1 - delta``.

Roles come from the project's hashed split of question ids (``q-`` plus the
sha1 of the prompt, as for the bundled sets):

- the router (TF-IDF of the prompt plus simple features of the weak response,
  fed to a ridge-regularized logistic regression) is fitted on the training
  role, split score < 0.2;
- the threshold is calibrated on 0.2 to 0.5;
- everything is reported on the test half, split score >= 0.5.

The oracle router escalates exactly the questions where only the strong model
is right.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stopwise.calibrate import calibrate_losses
from stopwise.errors import ConfigError, TraceFormatError
from stopwise.stats.ranking import auroc
from stopwise.stats.split import TRAIN_FRACTION, split_mask, training_mask

__all__ = ["GRID", "RoutingData", "cascade", "load_routellm", "router_losses", "validate_cascade"]

GRID = tuple(float(x) for x in np.round(np.linspace(1.0, 0.0, 41), 3))
_HEDGES = re.compile(r"\b(however|but|approximately|assume|cannot|can't|unclear|not sure|wait|actually)\b", re.I)


@dataclass
class RoutingData:
    """Questions answered by a weak and a strong model, with correctness labels."""

    name: str
    weak: str
    strong: str
    question_ids: list[str]
    prompts: list[str]
    weak_text: list[str]
    strong_text: list[str]
    weak_ok: np.ndarray
    strong_ok: np.ndarray


def _bool(value: str, path: Path, line: int, field: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1"):
        return True
    if v in ("false", "0"):
        return False
    raise TraceFormatError(f"{value!r} is not True or False", path=str(path), line=line, field=field,
                           hint="the RouteLLM layout has one correctness column per model")


def load_routellm(path: str | Path) -> RoutingData:
    """Read RouteLLM's ``<task>_responses.csv`` layout: prompt, two correctness columns, two responses."""
    path = Path(path)
    if not path.is_file():
        raise TraceFormatError("routing data not found", path=str(path), hint="e.g. ../shared/data/routing/routellm_gsm8k_responses.csv")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise TraceFormatError("empty file", path=str(path), line=1) from None
        if len(header) != 5 or header[0] != "prompt" or not header[3].endswith("_response"):
            raise TraceFormatError(f"header {header} is not the RouteLLM layout", path=str(path), line=1,
                                   hint="expected: prompt,<weak>,<strong>,<weak>_response,<strong>_response")
        weak, strong = header[1], header[2]
        prompts, wt, st, wok, sok = [], [], [], [], []
        for row in reader:
            line = reader.line_num
            if len(row) != 5:
                raise TraceFormatError(f"{len(row)} fields, expected 5", path=str(path), line=line)
            prompts.append(row[0])
            wok.append(_bool(row[1], path, line, weak))
            sok.append(_bool(row[2], path, line, strong))
            wt.append(row[3])
            st.append(row[4])
    ids = ["q-" + hashlib.sha1(p.strip().encode("utf-8")).hexdigest()[:12] for p in prompts]
    return RoutingData(path.stem, weak, strong, ids, prompts, wt, st, np.asarray(wok), np.asarray(sok))


def _response_features(texts: list[str]) -> np.ndarray:
    rows = []
    for t in texts:
        words = max(len(t.split()), 1)
        rows.append([
            np.log1p(len(t)), np.log1p(words), float("####" in t), len(_HEDGES.findall(t)) / words * 100,
            np.log1p(len(re.findall(r"\d+(?:\.\d+)?", t))), np.log1p(t.count("\n")),
        ])
    return np.asarray(rows, dtype=np.float64)


def router_scores(data: RoutingData, train: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit the router on ``train`` (prompt TF-IDF + weak-response features, ridge logistic, grouped-free CV on C)
    and score every question: the estimated probability that the weak answer is right."""
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    if train.sum() < 20 or len(np.unique(data.weak_ok[train])) < 2:
        raise ConfigError(f"routing data '{data.name}': the training role has too few questions ({int(train.sum())}) to fit a router")
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=5000, sublinear_tf=True)
    vec.fit([data.prompts[i] for i in np.flatnonzero(train)])
    resp = _response_features(data.weak_text)
    scaler = StandardScaler().fit(resp[train])
    X = sparse.hstack([vec.transform(data.prompts), sparse.csr_matrix(scaler.transform(resp))]).tocsr()
    clf = LogisticRegressionCV(Cs=[0.01, 0.1, 1.0, 10.0], cv=5, scoring="neg_log_loss", max_iter=5000)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        clf.fit(X[train], data.weak_ok[train])
    info = {"features": int(X.shape[1]), "C": float(np.ravel(clf.C_)[0]), "training_questions": int(train.sum())}
    return clf.predict_proba(X)[:, 1], info


def router_losses(data: RoutingData, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(loss, kept)``, each (Q, G) over :data:`GRID`: the loss against always-strong, and whether the weak answer is kept."""
    kept = scores[:, None] >= np.asarray(GRID)[None, :]
    kept[:, 0] = False  # t = 1.0: always escalate (the safe end)
    lost = (~data.weak_ok & data.strong_ok)[:, None]
    return (kept & lost).astype(np.float64), kept


def cascade(data: RoutingData, *, epsilon: float = 0.02, delta: float = 0.1, weak_cost: float = 0.1) -> dict[str, Any]:
    """Fit, certify and test the weak-to-strong cascade; report it next to always-strong, always-weak and the oracle.

    ``weak_cost`` is the weak model's price per question relative to the strong
    model's (the weak model always runs first in a cascade).
    """
    train = training_mask(data.question_ids, TRAIN_FRACTION)
    half = split_mask(data.question_ids)
    calib, test = half & ~train, ~half
    scores, info = router_scores(data, train)
    loss, kept = router_losses(data, scores)
    index, cert, _, _ = calibrate_losses(loss[calib], risk="accuracy", epsilon=epsilon, delta=delta, method="binomial")
    j = 0 if index is None else index
    t_kept = kept[test, j]
    w, s = data.weak_ok[test], data.strong_ok[test]
    acc = float(np.where(t_kept, w, s).mean())
    oracle_escalate = ~w & s
    return {
        "data": data.name, "weak": data.weak, "strong": data.strong, "epsilon": epsilon, "delta": delta,
        "certified": cert.certified, "threshold": GRID[j], "n_train": int(train.sum()), "n_calibration": int(calib.sum()),
        "n_test": int(test.sum()), "router": info,
        "accuracy_cascade": acc, "accuracy_strong": float(s.mean()), "accuracy_weak": float(w.mean()),
        "accuracy_loss": float(s.mean()) - acc, "test_risk": float(loss[test, j].mean()),
        "escalated": float((~t_kept).mean()), "cost": float(weak_cost + (~t_kept).mean()),
        "cost_strong": 1.0, "weak_cost": weak_cost,
        "oracle_escalated": float(oracle_escalate.mean()), "oracle_cost": float(weak_cost + oracle_escalate.mean()),
        "router_auroc": auroc(scores[test], w),
        "guarantee": f"accuracy loss vs always-{data.strong} <= {epsilon} with probability >= {1 - delta} (Learn-then-Test)",
    }


def validate_cascade(data: RoutingData, *, epsilon: float = 0.02, delta: float = 0.1, draws: int = 300, seed: int = 0) -> list[dict[str, Any]]:
    """The cascade's guarantee over random calibration draws from the non-training questions (LTT and the naive control)."""
    from stopwise.calibrate import validation_row
    from stopwise.stats.validate import ltt_calibrator, naive_calibrator, validate_calibrator

    train = training_mask(data.question_ids, TRAIN_FRACTION)
    scores, _ = router_scores(data, train)
    loss, _ = router_losses(data, scores)
    pop = loss[~train]
    n = len(pop) // 2
    rows = []
    for label, cal in (("cascade", ltt_calibrator(epsilon, delta, "binomial")), ("naive-control:cascade", naive_calibrator(epsilon))):
        v = validate_calibrator(pop, n, draws, cal, epsilon, delta, seed=seed)
        rows.append(validation_row(v, trace_set=data.name, policy=label, risk="accuracy loss vs strong", method="binomial"))
    return rows
