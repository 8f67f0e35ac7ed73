"""Hindsight oracles: how much any stopping rule could save.

No policy can beat these at zero disagreement, since each one looks at the
whole logged future:

* :func:`chain_oracle_positions` - per chain, the earliest probe position after
  which every later probe answer stays in the final answer's class;
* :func:`vote_oracle_chains` - per question, the fewest chains (in sample
  order) after which the majority vote never changes again;
* :func:`oracle_savings` - both as fractions of the full-compute tokens;
* :func:`stop_anywhere_result` - a family-free replay in which every unit may
  stop at any logged probe (one chain) or after any number of chains;
* :func:`epsilon_oracle` - the best cost savings reachable at a mean loss of
  at most epsilon, by one grid point of a replayed family or by letting every
  unit pick its own grid point in hindsight.

The fraction of oracle savings a calibrated policy reaches is the headline
efficiency figure (see DESIGN.md). Oracle costs exclude probe costs: an oracle
knows where to stop without asking. On a given chain a policy can be luckier
than :func:`chain_oracle_positions` (stopping at an early probe that happens
to agree before the answer wavers); the oracle is the earliest point from which
*every* later stop is right. :func:`epsilon_oracle` at ``epsilon = 0`` counts
such lucky stops too, so it bounds every grid point of a replayed family.

Examples
--------
>>> from stopwise.traces.synthetic import synthetic_trace_set
>>> ts = synthetic_trace_set(5, 3, mean_tokens=80, seed=0)
>>> s = oracle_savings(ts)
>>> 0.0 <= s["chain_saved"] <= 1.0 and 0.0 <= s["vote_saved"] <= 1.0
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stopwise.errors import ConfigError, UnknownNameError
from stopwise.policies.base import MISSING, ReplayResult, unit_losses
from stopwise.policies.single import probe_arrays
from stopwise.policies.voting import vote_prefixes

__all__ = [
    "LOSSES",
    "chain_oracle_positions",
    "epsilon_oracle",
    "loss_matrix",
    "majority_prefix",
    "oracle_savings",
    "stop_anywhere_result",
    "vote_oracle_chains",
]

LOSSES = ("disagreement", "accuracy")


# --- (a) one chain ----------------------------------------------------------------
def chain_oracle_positions(ts) -> np.ndarray:  # noqa: ANN001
    """Per chain, the earliest position at which stopping returns the final answer for good.

    That is the position of the earliest probe such that it and every later
    probe of the chain are in the class of the chain's final answer. It is
    ``n_tokens`` when no such probe exists or the final answer is missing.
    Uses every probe at positions ``1..n_tokens`` whatever its cue (position-0
    probes are never delivered by the replay drivers).

    Returns
    -------
    numpy.ndarray of int64, shape (n_chains,)
    """
    pa = probe_arrays(ts)
    final = np.asarray(ts.column("answer_class", fill=MISSING), dtype=np.int64)
    n_tok = np.asarray(ts.column("n_tokens", fill=0), dtype=np.int64)
    out = n_tok.copy()
    if len(pa.klass) == 0:
        return out
    starts, ends = pa.offsets[:-1], pa.offsets[1:]
    bad = pa.klass != final[pa.chain]
    last_bad = starts - 1
    idx = np.flatnonzero(bad)
    np.maximum.at(last_bad, pa.chain[idx], idx)
    cand = last_bad + 1
    ok = (cand < ends) & (final != MISSING)
    out[ok] = np.minimum(pa.position[cand[ok]], n_tok[ok])
    return out


# --- (b) many chains --------------------------------------------------------------
def majority_prefix(classes: np.ndarray) -> np.ndarray:
    """Majority vote over the first ``k`` answers, for ``k = 1..n``.

    Missing answers (-1) do not vote; ties go to the class whose earliest vote
    comes first; -1 while nothing has voted.

    Examples
    --------
    >>> majority_prefix(np.array([2, 1, 1, -1, 2, 2])).tolist()
    [2, 2, 1, 1, 2, 2]
    """
    classes = np.asarray(classes, dtype=np.int64)
    if len(classes) == 0:
        return np.zeros(0, dtype=np.int64)
    return vote_prefixes(classes[None, :]).winner[0].astype(np.int64)


def vote_oracle_chains(ts) -> np.ndarray:  # noqa: ANN001
    """Per question, the fewest chains ``k >= 1`` after which the majority vote never changes.

    The vote over the first ``k'`` chains (sample order) equals the vote over
    all chains for every ``k' >= k``. 0 for a question without chains.

    Returns
    -------
    numpy.ndarray of int64, shape (n_questions,)
    """
    out = np.zeros(ts.n_questions, dtype=np.int64)
    if ts.n_chains == 0:
        return out
    votes = vote_prefixes(ts.padded("answer_class", MISSING).astype(np.int64)).winner
    for q, n in enumerate(ts.chain_counts.tolist()):
        if n == 0:
            continue
        differs = np.flatnonzero(votes[q, :n] != votes[q, n - 1])
        out[q] = 1 if len(differs) == 0 else int(differs[-1]) + 2
    return out


def oracle_savings(ts) -> dict[str, Any]:  # noqa: ANN001
    """Zero-disagreement savings of the two oracles, as fractions of the full tokens.

    Returns
    -------
    dict
        ``tokens_full`` (all logged tokens); ``chain_tokens`` and
        ``chain_saved``: every chain stopped at :func:`chain_oracle_positions`;
        ``vote_tokens``, ``vote_chains`` and ``vote_saved``: every question
        draws the first :func:`vote_oracle_chains` chains, run to the end.
    """
    n_tok = np.asarray(ts.column("n_tokens", fill=0), dtype=np.int64)
    full = int(n_tok.sum())
    chain_tokens = int(chain_oracle_positions(ts).sum())
    k = vote_oracle_chains(ts)
    offsets = ts.question_offsets
    within = np.arange(ts.n_chains, dtype=np.int64) - offsets[:-1][ts.question_index]
    kept = within < k[ts.question_index]
    vote_tokens = int(n_tok[kept].sum())

    def saved(t: int) -> float:
        return 0.0 if full == 0 else 1.0 - t / full

    return {
        "tokens_full": full,
        "chain_tokens": chain_tokens,
        "chain_saved": saved(chain_tokens),
        "vote_tokens": vote_tokens,
        "vote_chains": int(k.sum()),
        "vote_saved": saved(vote_tokens),
    }


# --- (c) stopping anywhere, for the epsilon oracle ---------------------------------
def stop_anywhere_result(ts, kind: str) -> ReplayResult:  # noqa: ANN001
    """A family-free 'stop anywhere' replay: every probe (single) or every chain count (multi).

    Oracle costs carry no probe tokens: an oracle knows where to stop without asking.
    """
    n_tok = ts.column("n_tokens").astype(np.int64)
    final = ts.column("answer_class", fill=MISSING).astype(np.int64)
    ref = ts.questions.column("reference_class").to_numpy().astype(np.int64)
    if kind == "single":
        offs, pos = ts.list_column("probe_position") if ts.has("probe_position") else (np.zeros(ts.n_chains + 1, np.int64), np.zeros(0))
        _, cls = ts.list_column("probe_class") if ts.has("probe_class") else (None, np.zeros(0))
        counts = np.diff(offs)
        width = max(int(counts.max(initial=0)), 1)
        answer = np.repeat(final[:, None], width, axis=1)
        tokens = np.repeat(n_tok[:, None], width, axis=1)
        row = np.repeat(np.arange(ts.n_chains), counts)
        col = np.arange(len(pos)) - np.repeat(offs[:-1], counts)
        answer[row, col] = cls
        tokens[row, col] = pos
        units = ts.question_index
        zeros = np.zeros_like(tokens)
        return ReplayResult(
            family="oracle", grid=np.arange(width), unit="chain", unit_question=units,
            answer=answer, abstained=np.zeros_like(answer, bool), tokens=tokens, probe_tokens=zeros,
            latency=tokens, chains=np.ones_like(tokens), answer_full=final, tokens_full=n_tok,
            probe_tokens_full=np.zeros_like(n_tok), latency_full=n_tok, chains_full=np.ones_like(n_tok),
            correct_class=ref[units],
        )
    classes = ts.padded("answer_class", MISSING).astype(np.int64)
    toks = ts.padded("n_tokens", 0).astype(np.int64)
    width = classes.shape[1]
    votes = vote_prefixes(classes).winner  # (Q, M): vote of the first k+1 chains
    cum = np.cumsum(toks, axis=1)
    counts = ts.chain_counts
    full_answer = votes[np.arange(ts.n_questions), counts - 1]
    full_tokens = cum[np.arange(ts.n_questions), counts - 1]
    k = np.arange(1, width + 1)[None, :]
    beyond = k > counts[:, None]
    answer = np.where(beyond, full_answer[:, None], votes)
    tokens = np.where(beyond, full_tokens[:, None], cum)
    chains = np.where(beyond, counts[:, None], k)
    lat = np.where(beyond, toks.max(axis=1)[:, None], np.maximum.accumulate(toks, axis=1))
    return ReplayResult(
        family="oracle", grid=np.arange(1, width + 1), unit="question", unit_question=np.arange(ts.n_questions),
        answer=answer, abstained=np.zeros_like(answer, bool), tokens=tokens, probe_tokens=np.zeros_like(tokens),
        latency=lat, chains=chains, answer_full=full_answer, tokens_full=full_tokens,
        probe_tokens_full=np.zeros_like(full_tokens), latency_full=toks.max(axis=1), chains_full=counts.astype(np.int64),
        correct_class=ref,
    )


# --- (d) epsilon oracle -------------------------------------------------------------
def loss_matrix(result: ReplayResult, loss: str | np.ndarray = "disagreement") -> np.ndarray:
    """The (U, G) loss of every unit at every grid point.

    A risk name uses the one definition of :func:`stopwise.policies.base.unit_losses`
    (so the oracle and calibration count losses the same way); an array of
    shape (U, G) is checked and returned as float.
    """
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise UnknownNameError("loss", loss, LOSSES)
        return unit_losses(result, loss)
    arr = np.asarray(loss, dtype=np.float64)
    if arr.shape != result.answer.shape:
        raise ConfigError(f"loss array has shape {arr.shape}; expected {result.answer.shape} (units, grid)")
    if (arr < 0).any() or not np.isfinite(arr).all():
        raise ConfigError("losses must be finite and non-negative")
    return arr


def _hull_steps(losses: np.ndarray, savings: np.ndarray) -> list[tuple[float, float]]:
    """Increments (d_loss, d_saved) along the upper concave hull of (loss, saved) from (0, 0)."""
    steps: list[tuple[float, float]] = []
    cur_l, cur_s = 0.0, 0.0
    while True:
        mask = (losses > cur_l) & (savings > cur_s)
        if not mask.any():
            return steps
        slope = (savings[mask] - cur_s) / (losses[mask] - cur_l)
        best = slope.max()
        # among equally steep points go furthest, so slopes strictly decrease
        far = np.flatnonzero(mask)[slope >= best * (1 - 1e-12)]
        j = far[np.argmax(losses[far])]
        steps.append((float(losses[j] - cur_l), float(savings[j] - cur_s)))
        cur_l, cur_s = float(losses[j]), float(savings[j])


def epsilon_oracle(result: ReplayResult, epsilon: float, loss: str | np.ndarray = "disagreement") -> dict[str, Any]:
    """The best cost savings at a mean loss of at most ``epsilon``, with hindsight.

    Two oracles over a replayed family, costs being tokens plus probe tokens:

    * *best grid point*: the cheapest single column whose mean loss is at most
      ``epsilon`` (full compute, saving 0, if none);
    * *hindsight*: every unit picks its own column (or full compute, loss 0).
      Each unit first takes its cheapest zero-loss option for free; then the
      lossy improvements along each unit's concave hull of (loss, savings) are
      taken greedily by savings per unit of loss while the mean loss stays
      within ``epsilon`` (a unit whose next step does not fit takes no more).
      The greedy is the standard approximation of this multiple-choice
      knapsack; it is exact when it fills the budget.

    Parameters
    ----------
    result : ReplayResult
    epsilon : float
        Allowed mean loss over units (non-negative; in [0, 1] for 0/1 losses).
    loss : {"disagreement", "accuracy"} or array of shape (U, G)

    Returns
    -------
    dict
        ``saved`` (the larger of the two), ``grid_saved``, ``grid_index``
        (None when no column qualifies), ``grid_loss``, ``hindsight_saved``,
        ``hindsight_loss``, ``cost_full``, ``epsilon``, ``n_units``. Savings
        are fractions of the full-compute cost.

    Examples
    --------
    >>> from stopwise.traces.synthetic import synthetic_trace_set
    >>> from stopwise.policies.registry import get_family
    >>> res = get_family("answer_convergence").replay(synthetic_trace_set(10, 2, seed=0))
    >>> out = epsilon_oracle(res, 0.0)
    >>> out["hindsight_saved"] >= out["grid_saved"] - 1e-12
    True
    """
    if not np.isfinite(epsilon) or float(epsilon) < 0:
        raise ConfigError(f"epsilon must be a non-negative number, got {epsilon}")
    losses = loss_matrix(result, loss)
    cost = result.cost.astype(np.float64)
    cost_full = result.cost_full.astype(np.float64)
    n_units = cost.shape[0]
    total_full = float(cost_full.sum())
    out: dict[str, Any] = {"epsilon": float(epsilon), "n_units": int(n_units), "cost_full": total_full}
    if n_units == 0 or total_full <= 0:
        out.update(saved=0.0, grid_saved=0.0, grid_index=None, grid_loss=0.0, hindsight_saved=0.0, hindsight_loss=0.0)
        return out
    tol = 1e-12

    # one grid point for every unit
    mean_loss = losses.mean(axis=0)
    col_saved = 1.0 - cost.sum(axis=0) / total_full
    ok = np.flatnonzero(mean_loss <= epsilon + tol)
    if len(ok):
        j = int(ok[np.argmax(col_saved[ok])])
        grid_index, grid_saved, grid_loss = (j, float(col_saved[j]), float(mean_loss[j])) if col_saved[j] > 0 else (None, 0.0, 0.0)
    else:
        grid_index, grid_saved, grid_loss = None, 0.0, 0.0

    # hindsight: per-unit choice among the columns and full compute
    opt_cost = np.concatenate([cost, cost_full[:, None]], axis=1)
    opt_loss = np.concatenate([losses, np.zeros((n_units, 1))], axis=1)
    free = np.where(opt_loss <= 0, opt_cost, np.inf).min(axis=1)
    chosen_cost = free.copy()
    gain = free[:, None] - opt_cost
    lossy_units = np.flatnonzero(((opt_loss > 0) & (gain > 0)).any(axis=1))
    increments: list[tuple[float, int, int, float, float]] = []
    for u in lossy_units.tolist():
        mask = opt_loss[u] > 0
        for step, (dl, ds) in enumerate(_hull_steps(opt_loss[u][mask], gain[u][mask])):
            increments.append((-ds / dl, u, step, dl, ds))
    increments.sort()
    budget = float(epsilon) * n_units
    spent = 0.0
    blocked: set[int] = set()
    for _, u, _, dl, ds in increments:
        if u in blocked:
            continue
        if spent + dl <= budget + tol:
            spent += dl
            chosen_cost[u] -= ds
        else:
            blocked.add(u)
    hindsight_saved = 1.0 - float(chosen_cost.sum()) / total_full
    out.update(
        saved=max(grid_saved, hindsight_saved),
        grid_saved=grid_saved,
        grid_index=grid_index,
        grid_loss=grid_loss,
        hindsight_saved=hindsight_saved,
        hindsight_loss=spent / n_units,
    )
    return out
