"""Order-independent answer clustering."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stopwise.answers import MISSING, AnswerChecker, Clustering, cluster_answers, normalize

POOL = [
    "18", "18.0", "$18$", "18.00", "1/2", "0.5", "\\frac{1}{2}", "\\dfrac{1}{2}", "2", "3", "-3",
    "x+1", "X + 1", "\\text{East}", "east", "1,000", "1000", "(3, 4)", "", "  ", None,
]  # fmt: skip


@pytest.fixture(scope="module")
def plain() -> AnswerChecker:
    return AnswerChecker(use_math_verify=False)


def test_basic_clustering(plain: AnswerChecker) -> None:
    cl = cluster_answers(["18", None, "18.0", "7", "$7$", ""], plain, reference="7")
    assert isinstance(cl, Clustering)
    assert cl.ids.dtype == np.int32
    assert cl.ids.tolist() == [0, MISSING, 0, 1, 1, MISSING]
    assert cl.representatives == ["18", "7"]
    assert cl.reference_id == 1
    assert cl.n_classes == 2
    assert not cl.ids.flags.writeable


def test_reference_without_match_gets_new_class(plain: AnswerChecker) -> None:
    cl = cluster_answers(["5", "6"], plain, reference="$42$")
    assert cl.ids.tolist() == [0, 1]
    assert cl.reference_id == 2
    assert cl.representatives == ["5", "6", "42"]


def test_no_reference_and_empty_input(plain: AnswerChecker) -> None:
    assert cluster_answers(["5"], plain).reference_id == -1
    cl = cluster_answers([], plain, reference="1")
    assert cl.ids.shape == (0,) and cl.representatives == ["1"] and cl.reference_id == 0
    cl = cluster_answers([None, ""], plain)
    assert cl.ids.tolist() == [MISSING, MISSING] and cl.representatives == []


def test_math_verify_clustering() -> None:
    with AnswerChecker() as ch:
        cl = cluster_answers(["\\frac{1}{2}", "0.5", "\\sqrt{4}", "2", None, "x^2+2x+1", "(x+1)^2"], ch, reference="1/2")
    ids = cl.ids.tolist()
    assert ids[0] == ids[1] == cl.reference_id
    assert ids[2] == ids[3] != ids[0]
    assert ids[5] == ids[6] not in (ids[0], ids[2])
    assert ids[4] == MISSING
    assert cl.n_classes == 3


answers_st = st.lists(st.sampled_from(POOL), max_size=25)


@settings(max_examples=200, deadline=None)
@given(answers=answers_st, reference=st.sampled_from(POOL))
def test_equivalent_answers_share_an_id(plain: AnswerChecker, answers: list, reference: str | None) -> None:
    cl = cluster_answers(answers, plain, reference=reference)
    ids = cl.ids
    assert ids.shape == (len(answers),)
    for i, a in enumerate(answers):
        for j, b in enumerate(answers):
            if ids[i] != MISSING and ids[j] != MISSING:
                assert (ids[i] == ids[j]) == plain.equivalent(a, b), (a, b)
    for i, a in enumerate(answers):
        if ids[i] != MISSING:
            assert plain.equivalent(a, cl.representatives[ids[i]])
            assert (ids[i] == cl.reference_id) == plain.equivalent(a, reference)


@settings(max_examples=200, deadline=None)
@given(answers=answers_st, reference=st.sampled_from(POOL), data=st.data())
def test_ids_stable_under_permutation(plain: AnswerChecker, answers: list, reference: str | None, data) -> None:
    perm = data.draw(st.permutations(range(len(answers))))
    a = cluster_answers(answers, plain, reference=reference)
    b = cluster_answers([answers[p] for p in perm], plain, reference=reference)
    assert b.ids.tolist() == a.ids[list(perm)].tolist()
    assert b.representatives == a.representatives
    assert b.reference_id == a.reference_id


@settings(max_examples=200, deadline=None)
@given(answers=answers_st)
def test_missing_and_class_count(plain: AnswerChecker, answers: list) -> None:
    cl = cluster_answers(answers, plain)
    for a, k in zip(answers, cl.ids.tolist()):
        missing = a is None or normalize(a) == ""
        assert (k == MISSING) == missing
    present = [a for a in answers if a is not None and normalize(a)]
    assert cl.n_classes <= len(set(present))
    assert sorted(set(cl.ids.tolist()) - {MISSING}) == list(range(cl.n_classes))
    assert cl.reference_id == -1


@settings(max_examples=50, deadline=None)
@given(answers=st.lists(st.one_of(st.none(), st.text(max_size=8), st.integers(-50, 50).map(str)), max_size=15))
def test_arbitrary_text_never_breaks(plain: AnswerChecker, answers: list) -> None:
    cl = cluster_answers(answers, plain)
    assert len(cl.ids) == len(answers)
    assert (cl.ids >= MISSING).all() and (cl.ids < max(cl.n_classes, 1)).all()
