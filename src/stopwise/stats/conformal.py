"""Split conformal answer sets and conformal selection with false-discovery-rate control.

Arrays only; nothing here knows what an answer or a chain is.

Answer sets
-----------
Each calibration item has a probability vector over its candidate classes
(``probs[i, k]``, rows summing to at most 1) and the index of its true class,
or ``NONE`` when the truth is none of the candidates. The "none of these"
element gets the leftover mass ``1 - sum(probs[i])`` (0 when the candidates
take everything), so the guarantee is unconditional: a set covers the truth
(a candidate, or "none of these") with probability at least ``1 - alpha``,
marginally over exchangeable questions (Vovk et al.; Angelopoulos & Bates).

``lac``  (least ambiguous classifier) nonconformity ``1 - p(y)``; sets keep
         every element whose probability is at least ``1 - q``.
``aps``  (adaptive prediction sets, randomized as in Romano et al. 2020)
         nonconformity = mass of the elements ranked above ``y`` plus
         ``U * p(y)`` with ``U`` uniform (one draw per item, seeded); ties in
         probability are ranked by candidate index. Without the randomization
         one-hot rows (one chain per question) make every score 1.

Selection
---------
Conformal p-values for "this answer is wrong" from a labeled calibration set
(Jin & Candes, "Selection by prediction with conformal p-values", JMLR 2023):
``p_j = (1 + #{i : wrong_i and s_i >= s_j}) / (n + 1)`` for a test score
``s_j`` (higher = more confident), then Benjamini-Hochberg at level ``q``. The
false discovery rate among released answers is at most ``q`` in expectation
over calibration and test draws (a marginal guarantee).
"""

from __future__ import annotations

import math

import numpy as np

from stopwise.errors import ConfigError

__all__ = [
    "NONE",
    "SCORES",
    "benjamini_hochberg",
    "conformal_pvalues",
    "conformal_quantile",
    "nonconformity",
    "prediction_sets",
]

NONE = -1
SCORES = ("lac", "aps")


def _with_none(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ConfigError(f"probs must be a 2-D array (items x candidates), got shape {probs.shape}")
    if (probs < -1e-12).any() or (probs.sum(axis=1) > 1 + 1e-9).any():
        raise ConfigError("probs must be non-negative with rows summing to at most 1")
    rest = np.clip(1.0 - probs.sum(axis=1, keepdims=True), 0.0, 1.0)
    return np.concatenate([probs, rest], axis=1)  # last column: "none of these"


def _label_columns(labels: np.ndarray, k: int) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    if ((labels < NONE) | (labels >= k)).any():
        raise ConfigError(f"labels must be candidate indices 0..{k - 1} or NONE (-1)")
    return np.where(labels == NONE, k, labels)


def _aps_above(p: np.ndarray) -> np.ndarray:
    """Mass of the elements ranked strictly above each element (rank: probability, then index)."""
    order = np.argsort(-p, axis=1, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=1)
    before = np.cumsum(sorted_p, axis=1) - sorted_p
    above = np.empty_like(p)
    np.put_along_axis(above, order, before, axis=1)
    return above


def _uniforms(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(n)


def nonconformity(probs: np.ndarray, labels: np.ndarray, score: str = "lac", *, seed: int = 0) -> np.ndarray:
    """Nonconformity of each item's true element (a candidate or "none of these")."""
    p = _with_none(probs)
    col = _label_columns(labels, probs.shape[1])
    rows = np.arange(len(p))
    py = p[rows, col]
    if score == "lac":
        return 1.0 - py
    if score == "aps":
        return _aps_above(p)[rows, col] + _uniforms(len(p), seed) * py
    raise ConfigError(f"unknown score '{score}'", hint=f"use one of {SCORES}")


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ``ceil((n+1)(1-alpha))``-th smallest calibration score (+inf when that exceeds n)."""
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(s)
    r = math.ceil((n + 1) * (1.0 - alpha))
    return math.inf if r > n else float(s[r - 1])


def prediction_sets(probs: np.ndarray, qhat: float, score: str = "lac", *, seed: int = 1) -> np.ndarray:
    """Boolean membership (items x (candidates + 1)); the last column is "none of these".

    ``seed`` draws the APS randomization of the items being predicted (use a
    different seed from the calibration's).
    """
    p = _with_none(probs)
    if score == "lac":
        return (1.0 - p) <= qhat + 1e-12
    if score == "aps":
        return _aps_above(p) + _uniforms(len(p), seed)[:, None] * p <= qhat + 1e-12
    raise ConfigError(f"unknown score '{score}'", hint=f"use one of {SCORES}")


def conformal_pvalues(calib_scores: np.ndarray, calib_wrong: np.ndarray, test_scores: np.ndarray) -> np.ndarray:
    """Conformal p-values of the null "the answer is wrong" for test items (higher score = more confident)."""
    cs = np.asarray(calib_scores, dtype=np.float64)
    wrong = np.asarray(calib_wrong, dtype=bool)
    ts = np.asarray(test_scores, dtype=np.float64)
    null = np.sort(cs[wrong])
    n = len(cs)
    # count of wrong calibration items scoring at least as high as each test item
    ge = len(null) - np.searchsorted(null, ts, side="left")
    return (1.0 + ge) / (n + 1.0)


def benjamini_hochberg(pvalues: np.ndarray, q: float) -> np.ndarray:
    """Boolean mask of the items Benjamini-Hochberg rejects at level ``q``."""
    if not 0.0 < q < 1.0:
        raise ConfigError(f"q must be in (0, 1), got {q}")
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    if m == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(p, kind="stable")
    ok = p[order] <= q * np.arange(1, m + 1) / m
    out = np.zeros(m, dtype=bool)
    if ok.any():
        out[order[: int(np.flatnonzero(ok)[-1]) + 1]] = True
    return out
