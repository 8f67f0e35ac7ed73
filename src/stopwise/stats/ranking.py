"""How well a score ranks positives above negatives (arrays only)."""

from __future__ import annotations

import numpy as np


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for the boolean labels ``positive``; None with a single class.

    Examples
    --------
    >>> auroc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([True, True, False, False]))
    1.0
    """
    from sklearn.metrics import roc_auc_score

    positive = np.asarray(positive, dtype=bool)
    return float(roc_auc_score(positive, scores)) if len(np.unique(positive)) == 2 else None
