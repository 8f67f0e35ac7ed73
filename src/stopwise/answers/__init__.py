"""Answers: extract them from model text, decide equivalence, cluster them.

- :func:`extract_answer`, :func:`find_candidates`, :func:`gsm8k_reference`
  read answers out of text (:mod:`stopwise.answers.extract`).
- :class:`AnswerChecker` and :func:`normalize` decide whether two answers
  agree (:mod:`stopwise.answers.equivalence`).
- :func:`cluster_answers` turns one question's answers into order-independent
  class ids (:mod:`stopwise.answers.cluster`).

This layer sits just above :mod:`stopwise.stats` and imports only the standard
library, numpy, math-verify (lazily, in a worker process) and
:mod:`stopwise.errors`.
"""

from stopwise.answers.cluster import MISSING, Clustering, EquivalenceChecker, cluster_answers
from stopwise.answers.equivalence import AnswerChecker, normalize
from stopwise.answers.extract import Candidate, extract_answer, find_candidates, gsm8k_reference

__all__ = [
    "MISSING",
    "AnswerChecker",
    "Candidate",
    "Clustering",
    "EquivalenceChecker",
    "cluster_answers",
    "extract_answer",
    "find_candidates",
    "gsm8k_reference",
    "normalize",
]
