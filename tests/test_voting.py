"""Vote helpers: tie-breaking, missing answers, weights, and scalar/vectorized agreement."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stopwise.errors import ConfigError
from stopwise.policies.voting import MISSING, Tally, tally, vote, vote_prefixes, vote_rows


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        ([2, 1, 1, 2], 2),  # tie: 2 voted first
        ([1, 2, 2, 1], 1),
        ([0, 1, 1, 0], 0),  # 1 reached two votes first, but 0's first vote came first
        ([3, 5, 5, 3, 7], 3),
        ([-1, 4, 4, 3], 4),
        ([-1, 3, 4], 3),  # a missing answer never votes, even when it comes first
        ([5, 5, 9, 9, 9], 9),  # a strict majority beats the earlier class
        ([], MISSING),
        ([-1, -1], MISSING),
    ],
)
def test_vote_ties_go_to_earliest_first_vote(classes, expected):
    assert vote(classes) == expected


def test_weighted_vote():
    assert vote([0, 1], [0.5, 0.75]) == 1
    assert vote([0, 1, 1], [3.0, 1.0, 1.0]) == 0
    assert vote([0, 1], [1.0, 1.0]) == 0  # exact tie: earliest first vote
    assert vote([1, 0], [1.0, 1.0]) == 1
    assert vote([-1, 2], [100.0, 0.1]) == 2  # missing answers never vote, whatever their weight
    with pytest.raises(ConfigError, match="2 classes but 1 weights"):
        vote([0, 1], [1.0])


def test_tally_counts():
    assert tally([1, 2, 2, -1]) == Tally(winner=2, top=2, runner_up=1, n_votes=3)
    assert tally([4, 4, 4]) == Tally(4, 3, 0, 3)
    assert tally([0, 1, 1, 0]) == Tally(0, 2, 2, 4)  # tie: runner_up equals top
    assert tally([-1]) == Tally(MISSING, 0, 0, 0)
    assert tally([]) == Tally(MISSING, 0, 0, 0)


def test_vote_prefixes_small_case():
    pv = vote_prefixes(np.array([[2, 1, 1, 2], [-1, -1, 3, -1]]))
    assert pv.winner.tolist() == [[2, 2, 1, 2], [-1, -1, 3, 3]]
    assert pv.top.tolist() == [[1, 1, 2, 2], [0, 0, 1, 1]]
    assert pv.runner_up.tolist() == [[0, 1, 1, 2], [0, 0, 0, 0]]
    assert pv.n_votes.tolist() == [[1, 2, 3, 4], [0, 0, 1, 1]]


def test_empty_shapes_and_errors():
    for shape in [(0, 0), (3, 0), (0, 4)]:
        pv = vote_prefixes(np.full(shape, -1))
        assert pv.winner.shape == shape
        assert vote_rows(np.full(shape, -1)).shape == (shape[0],)
    assert vote_rows(np.full((2, 3), -1)).tolist() == [-1, -1]
    with pytest.raises(ConfigError, match="matrix"):
        vote_prefixes(np.zeros(3, dtype=int))
    with pytest.raises(ConfigError, match="weights"):
        vote_rows(np.zeros((2, 2), dtype=int), np.zeros((2, 3)))


_class_matrix = hnp.arrays(
    np.int64,
    st.tuples(st.integers(0, 6), st.integers(0, 9)),
    elements=st.integers(-1, 4),
)


@settings(max_examples=200, deadline=None)
@given(_class_matrix)
def test_vote_prefixes_match_scalar_tally(classes):
    pv = vote_prefixes(classes)
    for q in range(classes.shape[0]):
        for m in range(classes.shape[1]):
            t = tally(classes[q, : m + 1].tolist())
            assert (pv.winner[q, m], pv.top[q, m], pv.runner_up[q, m], pv.n_votes[q, m]) == tuple(t)


@settings(max_examples=200, deadline=None)
@given(_class_matrix, st.data())
def test_vote_rows_match_scalar_vote(classes, data):
    # few distinct weights, so exact ties in the weight sums happen often
    weights = data.draw(hnp.arrays(np.float64, classes.shape, elements=st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 3.0])))
    got = vote_rows(classes, weights)
    plain = vote_rows(classes)
    for q in range(classes.shape[0]):
        assert got[q] == vote(classes[q].tolist(), weights[q].tolist())
        assert plain[q] == vote(classes[q].tolist())


def test_large_class_ids_use_little_memory():
    classes = np.array([[10**12, 5, 10**12], [7, 7, -1]])
    assert vote_rows(classes).tolist() == [10**12, 7]
    assert vote_prefixes(classes).winner[:, -1].tolist() == [10**12, 7]
