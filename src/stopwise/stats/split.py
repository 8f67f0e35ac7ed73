"""The project's one split function: question ids to roles, by hash.

The same id always lands in the same role, in every trace set and every
command, so no question is used for calibration in one place and for testing
(or training) in another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

SALT = "stopwise-split-v1"

#: Questions with a split score below this are the *training* role: families that
#: learn from data (the learned exit probe) fit on them, and they are left out of
#: those families' calibration. They are a part of the calibration half (scores
#: below 0.5), so the test half (0.5 and up) is the same for every family.
TRAIN_FRACTION = 0.2


def split_score(question_id: str) -> float:
    """A number in [0, 1) fixed by the id (sha256 of salt and id)."""
    digest = hashlib.sha256(f"{SALT}:{question_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_mask(question_ids: Iterable[str], fraction: float = 0.5) -> np.ndarray:
    """True for ids in the first role (calibration, or training), a ``fraction`` share by hash.

    Examples
    --------
    >>> split_mask(["a", "b", "c", "d"]).tolist() == split_mask(["a", "b", "c", "d"]).tolist()
    True
    """
    return np.array([split_score(str(q)) < fraction for q in question_ids], dtype=bool)


def training_mask(question_ids: Iterable[str], fraction: float = TRAIN_FRACTION) -> np.ndarray:
    """True for ids in the training role (split score below ``fraction``), the same ids in every set."""
    return split_mask(question_ids, fraction)
