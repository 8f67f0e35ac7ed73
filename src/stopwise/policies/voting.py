"""Vote helpers shared by the multi-chain policies, scalar and vectorized.

One rule everywhere: a class's score is its number of votes (or the sum of its
votes' weights); the class with the highest score wins; among tied classes the
one whose *first* vote came earliest (lowest chain index in draw order) wins.
Missing answers (class < 0, :data:`MISSING`) never vote. With no vote at all
the result is :data:`MISSING`.

The scalar helpers (:func:`vote`, :func:`tally`) serve the event-driven
policies; the vectorized ones (:func:`vote_prefixes`, :func:`vote_rows`) serve
the replay sweeps over a padded ``(questions, chains)`` matrix of classes and
must agree with the scalar ones exactly (weights are summed in chain order, in
float64, on both sides).

Examples
--------
>>> vote([2, 1, 1, 2])          # 1 and 2 tie with two votes; 2 voted first
2
>>> vote([-1, 3, -1])
3
>>> vote([0, 1], weights=[0.5, 0.75])
1
>>> tally([1, 2, 2, -1])
Tally(winner=2, top=2, runner_up=1, n_votes=3)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from stopwise.errors import ConfigError

MISSING = -1


class Tally(NamedTuple):
    """Result of an unweighted vote.

    ``top`` is the winner's count, ``runner_up`` the second-largest class count
    (equal to ``top`` on a tie, 0 with fewer than two classes), ``n_votes`` the
    number of non-missing answers.
    """

    winner: int
    top: int
    runner_up: int
    n_votes: int


class PrefixVotes(NamedTuple):
    """Unweighted votes over every prefix of each row, shape ``(Q, M)`` each.

    Column ``m`` describes the vote over the row's first ``m + 1`` entries.
    """

    winner: np.ndarray
    top: np.ndarray
    runner_up: np.ndarray
    n_votes: np.ndarray


def vote(classes: Sequence[int], weights: Sequence[float] | None = None) -> int:
    """The winning class of ``classes`` (in draw order), -1 if nobody voted.

    Parameters
    ----------
    classes : sequence of int
        Answer class of each chain in draw order; negative values never vote.
    weights : sequence of float, optional
        Weight of each chain's vote (finite); summed per class in chain order.

    Returns
    -------
    int
        Highest count (or weight sum); ties go to the class whose first vote
        came first.

    Examples
    --------
    >>> vote([3, 5, 5, 3, 7])
    3
    """
    if weights is not None and len(weights) != len(classes):
        raise ConfigError(f"vote: {len(classes)} classes but {len(weights)} weights")
    score: dict[int, float] = {}
    first: dict[int, int] = {}
    for i, c in enumerate(classes):
        c = int(c)
        if c < 0:
            continue
        w = 1.0 if weights is None else float(weights[i])
        score[c] = score.get(c, 0.0) + w
        first.setdefault(c, i)
    if not score:
        return MISSING
    return max(score, key=lambda c: (score[c], -first[c]))


def tally(classes: Sequence[int]) -> Tally:
    """Unweighted vote with the counts that stopping rules need.

    Examples
    --------
    >>> tally([4, 4, 4])
    Tally(winner=4, top=3, runner_up=0, n_votes=3)
    >>> tally([])
    Tally(winner=-1, top=0, runner_up=0, n_votes=0)
    """
    counts: dict[int, int] = {}
    for c in classes:
        c = int(c)
        if c >= 0:
            counts[c] = counts.get(c, 0) + 1
    winner = vote(classes)
    if winner == MISSING:
        return Tally(MISSING, 0, 0, 0)
    top = counts[winner]
    others = [v for c, v in counts.items() if c != winner]
    return Tally(winner, top, max(others, default=0), sum(counts.values()))


def _pair_ids(classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compact ids of the (row, class) pairs of a padded class matrix.

    Returns ``pair`` (same shape, -1 where the class is missing) and
    ``pair_class`` (the class of each pair id). Memory stays proportional to the
    number of entries, whatever the class ids.
    """
    classes = np.asarray(classes, dtype=np.int64)
    if classes.ndim != 2:
        raise ConfigError(f"expected a (questions, chains) matrix of classes, got shape {classes.shape}")
    q, m = classes.shape
    valid = classes >= 0
    pair = np.full((q, m), -1, dtype=np.int64)
    if not valid.any():
        return pair, np.zeros(0, dtype=np.int64)
    # compact the class ids first so that row * width never overflows
    values, compact = np.unique(classes[valid], return_inverse=True)
    width = len(values)
    rows = np.broadcast_to(np.arange(q, dtype=np.int64)[:, None], (q, m))
    keys = rows[valid] * width + compact.reshape(-1)
    uniq, inv = np.unique(keys, return_inverse=True)
    pair[valid] = inv.reshape(-1)
    return pair, values[uniq % width]


def vote_prefixes(classes: np.ndarray) -> PrefixVotes:
    """Unweighted votes over every prefix of every row, vectorized over rows.

    Parameters
    ----------
    classes : (Q, M) int array
        Row ``q`` holds the classes of question ``q``'s chains in draw order,
        padded with -1 (padding never votes).

    Returns
    -------
    PrefixVotes
        ``winner[q, m]``, ``top[q, m]``, ``runner_up[q, m]`` and
        ``n_votes[q, m]`` describe :func:`tally` of ``classes[q, :m + 1]``.

    Examples
    --------
    >>> pv = vote_prefixes(np.array([[2, 1, 1, 2]]))
    >>> pv.winner.tolist(), pv.top.tolist(), pv.runner_up.tolist()
    ([[2, 2, 1, 2]], [[1, 1, 2, 2]], [[0, 1, 1, 2]])
    """
    pair, pair_class = _pair_ids(classes)
    q, m = pair.shape
    counts = np.zeros(len(pair_class), dtype=np.int64)
    first = np.zeros(len(pair_class), dtype=np.int64)
    leader = np.full(q, -1, dtype=np.int64)
    top = np.zeros(q, dtype=np.int64)
    runner = np.zeros(q, dtype=np.int64)
    n_votes = np.zeros(q, dtype=np.int64)
    out = PrefixVotes(
        np.full((q, m), MISSING, dtype=np.int64),
        np.zeros((q, m), dtype=np.int64),
        np.zeros((q, m), dtype=np.int64),
        np.zeros((q, m), dtype=np.int64),
    )
    for j in range(m):
        col = pair[:, j]
        rows = np.flatnonzero(col >= 0)
        if len(rows):
            c = col[rows]  # each pair id appears at most once per column
            old = counts[c]
            counts[c] = old + 1
            first[c[old == 0]] = j
            new = old + 1
            lead = leader[rows]
            a = top[rows]
            b = runner[rows]
            is_lead = lead == c
            # only c's score changed, so the new leader is the old one or c
            beats = ~is_lead & ((lead < 0) | (new > a) | ((new == a) & (first[c] < first[np.maximum(lead, 0)])))
            top[rows] = np.where(is_lead, a + 1, np.where(beats, new, a))
            runner[rows] = np.where(is_lead, b, np.where(beats, a, np.maximum(b, new)))
            leader[rows] = np.where(beats, c, lead)
            n_votes[rows] += 1
        has = leader >= 0
        out.winner[has, j] = pair_class[leader[has]]
        out.top[:, j] = top
        out.runner_up[:, j] = runner
        out.n_votes[:, j] = n_votes
    return out


def vote_rows(classes: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The (weighted) vote of each whole row of a padded class matrix.

    Parameters
    ----------
    classes : (Q, M) int array
        Classes in draw order, -1 for missing answers and padding.
    weights : (Q, M) float array, optional
        Vote weights (finite where the class is present), summed per class in
        chain order in float64 exactly as :func:`vote` does.

    Returns
    -------
    (Q,) int64 array
        The winner of each row, -1 for rows without a vote.

    Examples
    --------
    >>> vote_rows(np.array([[0, 1, 1], [2, -1, -1]]), np.array([[3.0, 1.0, 1.0], [1.0, 0.0, 0.0]])).tolist()
    [0, 2]
    """
    pair, pair_class = _pair_ids(classes)
    q, m = pair.shape
    if weights is None:
        weights = np.ones((q, m), dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != pair.shape:
        raise ConfigError(f"vote_rows: classes have shape {pair.shape} but weights {weights.shape}")
    score = np.zeros(len(pair_class), dtype=np.float64)
    first = np.full(len(pair_class), m, dtype=np.int64)
    pair_row = np.full(len(pair_class), -1, dtype=np.int64)
    for j in range(m):
        col = pair[:, j]
        rows = np.flatnonzero(col >= 0)
        c = col[rows]
        score[c] = score[c] + weights[rows, j]
        first[c] = np.minimum(first[c], j)
        pair_row[c] = rows
    winner = np.full(q, MISSING, dtype=np.int64)
    if len(pair_class):
        # rows ascending, then score descending, then first vote ascending
        order = np.lexsort((first, -score, pair_row))
        pr = pair_row[order]
        head = np.ones(len(order), dtype=bool)
        head[1:] = pr[1:] != pr[:-1]
        winner[pr[head]] = pair_class[order[head]]
    return winner
