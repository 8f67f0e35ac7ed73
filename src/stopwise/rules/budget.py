"""Budget mode: the most accurate policy setting whose mean cost per question stays under a cap.

The candidates are every setting of every applicable policy family (a family's
grid point), each run per question: multi-chain families on all of a question's
chains, single-chain families on its first chain. Cost is generated plus probe
tokens per question.

On the calibration half, a setting is admissible when its mean cost is certified
below the cap: the Hoeffding-Bentkus p-value of "mean cost / B > cap / B" is at
most ``delta / m`` for ``m`` candidates (Bonferroni), so with probability at
least ``1 - delta`` every admissible setting's expected cost is within the cap.
B must bound every question's cost *before the data are seen* (Hoeffding-Bentkus
needs losses in [0, 1] a priori): the user's ``cost_bound``, or, where the set
records its ``max_tokens`` and its probes cost nothing, the largest number of
chains per question times ``max_tokens``. A cost above B refuses the bound; with
no bound known, nothing is certified (the plug-in choice is still reported).
Among the admissible settings the one with the highest calibration accuracy is
chosen (ties: the cheaper). Accuracy is estimated, not guaranteed. With few
calibration questions the bound is loose (Hoeffding-Bentkus on costs scaled by
B), so the report also gives the plug-in choice (calibration mean cost under
the cap, no confidence bound), marked as an estimate. The test half
reports the chosen setting's accuracy and mean cost, beside the best setting in
hindsight on the test half under the same cap and the most accurate setting
with no cap.

Families that train a model (``learned_exit``, ``combined``) lose their training
questions from calibration, as everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stopwise.errors import ConfigError, UnsupportedError
from stopwise.policies.base import MISSING
from stopwise.policies.registry import family_names, prepare_family
from stopwise.stats.ltt import check_level
from stopwise.stats.pvalues import hb_pvalue
from stopwise.stats.split import split_mask

__all__ = ["admissible_settings", "budget_candidates", "budget_report", "prior_cost_bound"]


def budget_candidates(ts, families: list[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:  # noqa: ANN001
    """``(names, cost, correct, excluded)``: per candidate setting (C) and question (Q), cost (Q, C) and correctness
    (Q, C); ``excluded`` marks questions a trained family saw (Q,)."""
    if not ts.has("correct"):
        raise ConfigError(f"trace set '{ts.name}' has no labels (correct); budget mode maximizes accuracy")
    names: list[str] = []
    costs, corrects = [], []
    excluded = np.zeros(ts.n_questions, dtype=bool)
    for name in families or family_names():
        try:
            fam = prepare_family(name, ts)
        except (UnsupportedError, ConfigError):
            continue
        if fam.supports(ts):
            continue
        res = fam.replay(ts)
        trained = fam.training_mask(ts)
        if trained is not None:
            excluded |= np.asarray(trained, dtype=bool)
        uq = np.asarray(res.unit_question)
        first = np.r_[True, uq[1:] != uq[:-1]] if len(uq) else np.zeros(0, bool)
        rows = np.flatnonzero(first)
        if len(rows) != ts.n_questions:
            continue
        ref = np.asarray(res.correct_class)[rows][:, None]
        ok = (res.answer[rows] == ref) & ~res.abstained[rows] & (ref != MISSING)
        cost = res.cost[rows].astype(np.float64)
        for j, v in enumerate(np.asarray(res.grid).tolist()):
            names.append(f"{name} {fam.knob}={v:g}" + ("" if res.unit == "question" else " (first chain)"))
            costs.append(cost[:, j])
            corrects.append(ok[:, j])
    if not names:
        raise UnsupportedError(f"no policy family runs on trace set '{ts.name}'")
    return names, np.stack(costs, axis=1), np.stack(corrects, axis=1), excluded


def prior_cost_bound(ts) -> float | None:  # noqa: ANN001
    """A bound on any question's cost known before the data: chains per question times the collection's
    ``max_tokens``, where the set records it and its probes cost nothing; else None (give one)."""
    mt = (ts.provenance.sampling or {}).get("max_tokens")
    if not mt or not ts.n_questions:
        return None
    if ts.has("probe_cost"):
        off, vals = ts.list_column("probe_cost")
        if len(vals) and np.nanmax(np.asarray(vals, dtype=np.float64)) > 0:
            return None  # priced probes: their total has no bound that the collection settings fix
    return float(int(np.max(ts.chain_counts)) * int(mt))


def admissible_settings(cost_cal: np.ndarray, cap: float, bound: float, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """``(admissible, p_values)`` over the ``m`` columns of ``cost_cal`` (n, m): Hoeffding-Bentkus on costs scaled
    by the a-priori ``bound``, each tested at ``delta / m``. Raises when a cost exceeds the bound (it was no bound)."""
    cost_cal = np.asarray(cost_cal, dtype=np.float64)
    if not bound > 0:
        raise ConfigError(f"the cost bound must be a positive number of tokens; got {bound!r}")
    over = np.argwhere(cost_cal > bound)
    if len(over):
        i, j = over[0]
        raise ConfigError(f"a question costs {cost_cal[i, j]:g} tokens under candidate {j}, above the cost bound {bound:g}: "
                          "the bound must hold for every question before the data are seen",
                          hint="give --cost-bound at least chains x max_tokens plus everything probes may cost")
    m = cost_cal.shape[1]
    n = cost_cal.shape[0]
    if cap >= bound:  # every cost is at most the bound, hence the cap: certain, not estimated
        p = np.zeros(m)
    else:
        p = np.asarray(hb_pvalue(cost_cal.mean(axis=0) / bound, n, cap / bound), dtype=np.float64)
    return p <= delta / m, p


def budget_report(ts, *, cap: float, delta: float = 0.1, families: list[str] | None = None,  # noqa: ANN001
                  cost_bound: float | None = None) -> dict[str, Any]:
    """Choose the setting on the calibration half and report it on the test half (see the module docstring)."""
    check_level(delta, "delta")
    if not cap > 0:
        raise ConfigError(f"cap must be a positive number of tokens per question; got {cap!r}")
    names, cost, correct, excluded = budget_candidates(ts, families)
    calib = split_mask(ts.questions.column("question_id").to_pylist())
    test = ~calib
    cal = calib & ~excluded
    n = int(cal.sum())
    if n == 0:
        raise ConfigError(f"trace set '{ts.name}' has no calibration questions")
    bound = cost_bound if cost_bound is not None else prior_cost_bound(ts)
    m = len(names)
    mean_cal = cost[cal].mean(axis=0)
    acc_cal = correct[cal].mean(axis=0)
    if bound is None:
        admissible = np.zeros(m, dtype=bool)
        guarantee = ("nothing certified: no bound on a question's cost is known before the data (priced probes, or no "
                     "max_tokens recorded); give one with --cost-bound")
    else:
        admissible, _ = admissible_settings(cost[cal], cap, float(bound), delta)
        guarantee = (f"mean cost per question <= {cap:g} tokens with probability >= {1 - delta} for every admissible setting "
                     f"(Hoeffding-Bentkus, Bonferroni over {m} settings, costs bounded by {bound:g} before the data: "
                     + ("given" if cost_bound is not None else "chains per question x max_tokens") + ")")
    mean_test, acc_test = cost[test].mean(axis=0), correct[test].mean(axis=0)
    out: dict[str, Any] = {
        "trace_set": ts.name, "cap": cap, "delta": delta, "candidates": m, "n_calibration": n, "n_test": int(test.sum()),
        "bound": bound, "admissible": int(admissible.sum()), "guarantee": guarantee,
        "chosen": None, "accuracy": None, "mean_cost": None,
    }
    if admissible.any():
        idx = np.flatnonzero(admissible)
        best = idx[np.lexsort((mean_cal[idx], -acc_cal[idx]))[0]]
        out.update(chosen=names[best], accuracy=float(acc_test[best]), mean_cost=float(mean_test[best]),
                   calibration_accuracy=float(acc_cal[best]), calibration_cost=float(mean_cal[best]))
    # the plug-in choice: calibration mean cost under the cap, no confidence bound (an estimate, no guarantee)
    plug = np.flatnonzero(mean_cal <= cap)
    if len(plug):
        e = plug[np.lexsort((mean_cal[plug], -acc_cal[plug]))[0]]
        out["estimated"] = {"setting": names[e], "accuracy": float(acc_test[e]), "mean_cost": float(mean_test[e]),
                            "note": "calibration mean cost <= cap, no confidence bound: the cap may be exceeded"}
    under = np.flatnonzero(mean_test <= cap)
    if len(under):
        h = under[np.lexsort((mean_test[under], -acc_test[under]))[0]]
        out["hindsight"] = {"setting": names[h], "accuracy": float(acc_test[h]), "mean_cost": float(mean_test[h])}
    top = int(np.lexsort((mean_test, -acc_test))[0])
    out["uncapped_best"] = {"setting": names[top], "accuracy": float(acc_test[top]), "mean_cost": float(mean_test[top])}
    return out
