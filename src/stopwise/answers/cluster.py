"""Group the answers of one question into equivalence classes.

Class ids depend only on the multiset of answers, never on their order: the
distinct normalized answers are sorted, each joins the first earlier class
whose representative it is equivalent to (or opens a new class), and classes
are numbered in that sorted order. Replaying the same chains in another order
therefore gives the same ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from stopwise.answers.equivalence import normalize
from stopwise.answers.extract import _clean

__all__ = ["MISSING", "Clustering", "EquivalenceChecker", "cluster_answers"]

MISSING = -1
"""Class id of a missing answer (``None`` or empty); it agrees with nothing."""


class EquivalenceChecker(Protocol):
    """What :func:`cluster_answers` needs of a checker (:class:`~stopwise.answers.AnswerChecker` is one)."""

    def equivalent_many(self, pairs: Sequence[tuple[str | None, str | None]]) -> list[bool]:
        """Equivalence of each pair, in order."""
        ...


@dataclass(frozen=True, eq=False)
class Clustering:
    """Answer classes of one question.

    Attributes
    ----------
    ids : numpy.ndarray of int32, shape (n,)
        Class id of each input answer, aligned with the input; :data:`MISSING`
        (-1) for ``None`` or empty answers. Read-only.
    representatives : list of str
        ``representatives[k]`` is an answer string of class ``k``. When the
        reference matches no class its string is appended last.
    reference_id : int
        Class id of the reference answer; -1 if no reference was given.
    """

    ids: np.ndarray
    representatives: list[str]
    reference_id: int

    @property
    def n_classes(self) -> int:
        """Number of classes, the reference's included."""
        return len(self.representatives)


def cluster_answers(
    answers: Sequence[str | None],
    checker: EquivalenceChecker,
    *,
    reference: str | None = None,
) -> Clustering:
    """Cluster answers into equivalence classes, independently of their order.

    Parameters
    ----------
    answers : sequence of str or None
        Answers of one question (final and probe answers alike).
    checker : AnswerChecker
        Decides equivalence (anything with ``equivalent_many``).
    reference : str, optional
        Gold answer; its class id is reported as ``reference_id``.

    Returns
    -------
    Clustering

    Notes
    -----
    Answers with the same :func:`~stopwise.answers.normalize` form always share
    a class. Each distinct normalized form (in sorted order) is compared with the
    representative of every earlier class and joins the first that is
    equivalent; its representative is the shortest (then smallest) cleaned answer
    string with that form.
    Under a transitive checker equal ids mean equivalent answers and vice versa.

    Examples
    --------
    >>> from stopwise.answers import AnswerChecker
    >>> cl = cluster_answers(["18", None, "18.0", "7", "$7$"], AnswerChecker(use_math_verify=False), reference="7")
    >>> cl.ids.tolist(), cl.representatives, cl.reference_id
    ([0, -1, 0, 1, 1], ['18', '7'], 1)
    """
    keys: list[str | None] = []
    raw_by_key: dict[str, str] = {}
    for a in answers:
        key = normalize(a) if a is not None else ""
        if not key:
            keys.append(None)
            continue
        keys.append(key)
        s = _clean(str(a)) or str(a).strip()
        old = raw_by_key.get(key)
        if old is None or (len(s), s) < (len(old), old):
            raw_by_key[key] = s

    class_of: dict[str, int] = {}
    reps: list[str] = []
    for key in sorted(raw_by_key):
        raw = raw_by_key[key]
        match = -1
        if reps:
            verdicts = checker.equivalent_many([(raw, rep) for rep in reps])
            match = next((k for k, ok in enumerate(verdicts) if ok), -1)
        if match < 0:
            match = len(reps)
            reps.append(raw)
        class_of[key] = match

    ids = np.array([MISSING if k is None else class_of[k] for k in keys], dtype=np.int32)
    ids.setflags(write=False)

    reference_id = -1
    if reference is not None:
        ref_key = normalize(reference)
        if ref_key in class_of:
            reference_id = class_of[ref_key]
        else:
            verdicts = checker.equivalent_many([(reference, rep) for rep in reps]) if reps else []
            reference_id = next((k for k, ok in enumerate(verdicts) if ok), -1)
            if reference_id < 0:
                reference_id = len(reps)
                reps.append(_clean(str(reference)) or str(reference).strip())
    return Clustering(ids=ids, representatives=reps, reference_id=reference_id)
