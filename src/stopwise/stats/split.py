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
