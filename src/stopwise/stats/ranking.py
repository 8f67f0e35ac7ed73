"""How well a score ranks positives above negatives (arrays only)."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for the boolean labels ``positive``; None with a single class.

    The Mann-Whitney form: the chance that a random positive scores above a
    random negative, ties counting one half (what ``sklearn.metrics.roc_auc_score`` gives).

    Examples
    --------
    >>> auroc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([True, True, False, False]))
    1.0
    >>> auroc(np.array([0.5, 0.5]), np.array([True, False]))
    0.5
    """
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
