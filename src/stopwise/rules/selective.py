"""Selective answering: which confidence score tells right from wrong, and the certified abstention threshold.

Per question, the answer is the majority answer of its chains, and a score says
how sure we are of it. Four scores are available:

``vote_share``        share of the chains giving the majority answer;
``vote_margin``       that share minus the runner-up's share;
``probe_agreement``   share of the probes (with an answer) of the majority answer's chains that already gave it;
``probe_confidence``  mean forced-answer probability of those probes (sets whose probes carry logprobs).

For each score the module reports, on the test half:

- the AUROC for telling right answers from wrong ones;
- the risk-coverage curve;
- the certified rule "answer only when the score reaches t", with t chosen on
  the calibration half.

The rule's threshold comes from Learn-then-Test on the selective risk (error
among answered questions <= epsilon with probability >= 1 - delta; the
binomial p-value on the answered questions, thresholds tested from the most
abstaining down, skipping those that answer too few calibration questions to
ever pass: that choice uses the scores only, never the labels). Coverage is
the share of questions answered.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stopwise.rules.calibrate import calibrate_losses
from stopwise.rules.conformal import SCORES, question_scores
from stopwise.errors import ConfigError
from stopwise.stats.ltt import check_level
from stopwise.stats.ranking import auroc
from stopwise.stats.split import split_mask, training_mask

__all__ = ["SCORES", "dual_threshold_report", "question_scores", "selective_report", "validate_selective"]


def _grid(s_grid: np.ndarray, n_cal: int, epsilon: float, delta: float, points: int) -> np.ndarray:
    """Thresholds ascending (column 0 answers nearly everything, the last only the most confident).

    Quantiles of the scores of the *training role* (``s_grid``: questions never used to certify), so the grid is
    fixed before the calibration questions are seen. Thresholds that would answer fewer than ``n_min`` of the
    ``n_cal`` calibration questions at the training role's rate are dropped (twice ``n_min``, a margin for the
    calibration questions answering fewer than the training role predicts): they could not be certified even with
    no error (binomial tail (1 - eps)^n > delta), and a fixed sequence stops at its first failure. This looks at
    scores, never at labels, and only affects power."""
    grid = np.unique(np.quantile(s_grid, np.linspace(0, 1, points))) if len(s_grid) else np.zeros(1)
    n_min = int(np.ceil(np.log(delta) / np.log(1.0 - epsilon)))
    share = (s_grid[:, None] >= grid[None, :]).mean(axis=0) if len(s_grid) else np.ones(len(grid))
    enough = share * n_cal >= 2 * n_min
    return grid[enough] if enough.any() else grid[:1]


def _roles(ts) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """``(half, train)``: the hashed calibration half and the training role (grids are read off the latter, which
    never calibrates)."""
    qids = ts.questions.column("question_id").to_pylist()
    return split_mask(qids), training_mask(qids)


def _certify(answered_cal: np.ndarray, wrong_cal: np.ndarray, epsilon: float, delta: float) -> int | None:
    """LTT on the selective risk, testing from the last column (most abstaining) towards the first;
    the least abstaining certified column, or None."""
    losses = (answered_cal & wrong_cal[:, None]).astype(np.float64)
    j, _, _, _ = calibrate_losses(losses, risk="selective", epsilon=epsilon, delta=delta, method="binomial", answered=answered_cal)
    return j


def _naive(answered_cal: np.ndarray, wrong_cal: np.ndarray, epsilon: float) -> int | None:
    """The negative control: the least abstaining column whose calibration selective risk is <= epsilon."""
    n = answered_cal.sum(axis=0)
    risk = np.where(n > 0, (answered_cal & wrong_cal[:, None]).sum(axis=0) / np.maximum(n, 1), np.inf)
    ok = np.flatnonzero(risk <= epsilon)
    return int(ok[0]) if len(ok) else None


def validate_selective(ts, *, epsilon: float = 0.05, delta: float = 0.1, draws: int = 200, seed: int = 0,  # noqa: ANN001
                       points: int = 21) -> list[dict[str, Any]]:
    """The certified abstention rule over ``draws`` random calibration halves, each score with its naive control.

    The whole set is the population: a draw violates when the chosen threshold's
    selective risk over all the set's questions exceeds ``epsilon``; a draw that
    certifies nothing answers nothing and cannot violate. The guarantee holds when
    the violation frequency is consistent with ``<= delta`` (one-sided binomial
    test at 1%, as for the stopping rules).
    """
    from stopwise.rules.calibrate import validation_row
    from stopwise.stats.validate import validation_result

    if not ts.has("correct"):
        raise ConfigError(f"trace set '{ts.name}' has no labels (correct); selective answering needs them")
    scores_all, wrong_all, excluded = _all_scores(ts)
    _, train = _roles(ts)
    k = len(scores_all)  # a reader picks among the scores: each is certified at delta / k, as in selective_report
    rng = np.random.default_rng(seed)
    rows = []
    for name, s_all in scores_all.items():
        keep = ~excluded[name] & ~train  # the population: questions the score neither learned from nor read its grid off
        s, wrong = s_all[keep], wrong_all[keep]
        n = int(keep.sum())
        grid = _grid(s_all[train], n // 2, epsilon, delta / k, points)  # fixed before any draw
        answered = s[:, None] >= grid[None, :]
        pop_risk = (answered & wrong[:, None]).sum(axis=0) / np.maximum(answered.sum(axis=0), 1)
        viol = {"ltt": 0, "naive": 0}
        uncertified = {"ltt": 0, "naive": 0}
        for _ in range(draws):
            cal = np.zeros(n, dtype=bool)
            cal[rng.permutation(n)[: n // 2]] = True
            for kind, j in (("ltt", _certify(answered[cal], wrong[cal], epsilon, delta / k)),
                            ("naive", _naive(answered[cal], wrong[cal], epsilon))):
                if j is None:
                    uncertified[kind] += 1
                elif pop_risk[j] > epsilon:
                    viol[kind] += 1
        for kind, label in (("ltt", f"abstain:{name}"), ("naive", f"naive-control:abstain:{name}")):
            v = validation_result(viol[kind], draws, epsilon=epsilon, delta=delta, n_calibration=n // 2, uncertified=uncertified[kind])
            rows.append(validation_row(v, trace_set=ts.name, policy=label, risk="selective", method="binomial"))
    return rows


def learned_probe_score(ts) -> tuple[np.ndarray, np.ndarray] | None:  # noqa: ANN001 - TraceSet
    """The learned exit probe as a confidence score: ``(score, trained)`` per question, or None where it cannot train.

    The probe (:func:`stopwise.policies.learned.train_probe_model`, fitted on the
    training role) scores every probe with "this forced answer is the chain's
    final answer"; a chain's score is that of its last answered probe, and a
    question's score is the mean over the chains giving its majority answer
    (0 when none). ``trained`` marks the questions the probe was fitted on:
    they must stay out of calibration.
    """
    from stopwise.rules.conformal import selection_scores
    from stopwise.policies.base import MISSING
    from stopwise.policies.features import set_features
    from stopwise.policies.learned import train_probe_model
    from stopwise.policies.single import probe_arrays

    if not ts.has("probe_class"):
        return None
    try:
        model = train_probe_model(ts)
    except ConfigError:
        return None
    pa = probe_arrays(ts)
    p = model.scores(set_features(ts, pa, model.groups))  # as learned_exit scores them
    answered = np.flatnonzero(pa.klass != MISSING)
    last = np.full(ts.n_chains, np.nan)
    last[pa.chain[answered]] = p[answered]  # later probes overwrite earlier ones: the last answered probe wins
    answer, _, _ = selection_scores(ts, "vote_share")
    qi = np.asarray(ts.question_index, dtype=np.int64)
    final = np.asarray(ts.column("answer_class", fill=MISSING), dtype=np.int64)
    use = (final == answer[qi]) & np.isfinite(last) & (answer[qi] != MISSING)
    tot = np.bincount(qi[use], weights=last[use], minlength=ts.n_questions)
    cnt = np.bincount(qi[use], minlength=ts.n_questions)
    ids = set(model.trained_on.get("question_ids", []))
    trained = np.asarray([q in ids for q in ts.questions.column("question_id").to_pylist()], dtype=bool)
    return np.where(cnt > 0, tot / np.maximum(cnt, 1), 0.0), trained


def _all_scores(ts, learned: bool = True) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:  # noqa: ANN001
    """question_scores plus the learned probe's score, and per score the questions to keep out of calibration."""
    scores, wrong = question_scores(ts)
    excluded = {k: np.zeros(ts.n_questions, dtype=bool) for k in scores}
    lp = learned_probe_score(ts) if learned else None
    if lp is not None:
        scores["learned_probe"], excluded["learned_probe"] = lp
    return scores, wrong, excluded


def _risk_coverage(score: np.ndarray, wrong: np.ndarray) -> dict[str, list[float]]:
    """The whole risk-coverage curve: answering the k most confident questions, for every k that ends a tie group."""
    if len(score) == 0:
        return {"coverage": [], "risk": []}
    order = np.argsort(-score, kind="stable")
    ss, ww = score[order], wrong[order].astype(np.float64)
    k = np.arange(1, len(ss) + 1)
    ends = np.r_[ss[1:] != ss[:-1], True]
    return {"coverage": (k / len(ss))[ends].tolist(), "risk": (np.cumsum(ww) / k)[ends].tolist()}


def selective_report(ts, *, epsilon: float = 0.05, delta: float = 0.1, points: int = 21) -> list[dict[str, Any]]:  # noqa: ANN001
    """One row per score: AUROC, risk-coverage curve and the certified threshold, on the test half."""
    if not ts.has("correct"):
        raise ConfigError(f"trace set '{ts.name}' has no labels (correct); selective answering needs them")
    check_level(epsilon, "epsilon")
    check_level(delta, "delta")
    scores, wrong, excluded = _all_scores(ts)
    half, train = _roles(ts)
    test = ~half
    k = len(scores)  # the rows are compared and the best is read off: each score is certified at delta / k
    rows = []
    for name, s in scores.items():
        cal = half & ~train & ~excluded[name]  # the learned probe's training questions never calibrate it
        grid = _grid(s[train], int(cal.sum()), epsilon, delta / k, points)
        answered = s[:, None] >= grid[None, :]
        j = _certify(answered[cal], wrong[cal], epsilon, delta / k)
        ans_t = answered[test]
        cov = ans_t.mean(axis=0)
        risk = np.where(ans_t.sum(axis=0) > 0, (ans_t & wrong[test][:, None]).sum(axis=0) / np.maximum(ans_t.sum(axis=0), 1), 0.0)
        rows.append({
            "trace_set": ts.name, "score": name, "auroc": auroc(s[test], ~wrong[test]), "epsilon": epsilon, "delta": delta,
            "k_policies": k,
            "certified": j is not None and bool(answered[cal][:, j].any()), "threshold": None if j is None else float(grid[j]),
            # a certified threshold that answers no calibration question is no rule: say so instead of a row at 0%
            "decision": "nothing certified: answer nothing" if j is None else (
                "answers nothing: no useful abstention rule at this epsilon" if not answered[cal][:, j].any()
                else f"answer when {name} >= {float(grid[j]):.4g}"),
            "calibration_coverage": 0.0 if j is None else float(answered[cal][:, j].mean()),
            "coverage": 0.0 if j is None else float(cov[j]), "selective_risk": 0.0 if j is None else float(risk[j]),
            "error_all": float(wrong[test].mean()) if test.any() else float("nan"),
            "curve": {"coverage": cov.tolist(), "risk": risk.tolist()},
            "full_curve": _risk_coverage(s[test], wrong[test]),
            "n_calibration": int(cal.sum()), "n_test": int(test.sum()),
        })
    return rows


def dual_threshold_report(ts, *, score: str = "vote_share", epsilon_answer: float = 0.05, epsilon_set: float = 0.1,  # noqa: ANN001
                          delta: float = 0.1, points: int = 21) -> dict[str, Any]:
    """Three-way answering with two certified thresholds on one confidence score.

    ``score >= t_answer``: return the majority answer alone. ``t_set <= score <
    t_answer``: return the set of every distinct answer the chains gave (the
    caller sees several candidates). ``score < t_set``: abstain. Two risks:

    - the error among single answers <= ``epsilon_answer`` (the selective risk of
      :func:`selective_report`, LTT from the most abstaining threshold down);
    - the share of questions that get an output none of whose candidates is
      right <= ``epsilon_set``: a single answer that is wrong, or a set with no
      right candidate (LTT on the mean over all questions, from the highest
      ``t_set`` down, with the chosen ``t_answer``).

    Each is certified at ``delta / 2`` (Bonferroni), so both hold together with
    probability >= ``1 - delta``; the certificate names this. The second runs at
    ``delta / 2`` divided by the number of values ``t_answer`` could take, since
    ``t_answer`` is chosen on the same questions. Nothing below the certified
    ``t_set`` is output. Both grids are read off the training role, which never
    calibrates.
    """
    from stopwise.rules.conformal import candidates
    from stopwise.stats.conformal import NONE

    if not ts.has("correct"):
        raise ConfigError(f"trace set '{ts.name}' has no labels (correct); selective answering needs them")
    for v, name in ((epsilon_answer, "epsilon_answer"), (epsilon_set, "epsilon_set"), (delta, "delta")):
        check_level(v, name)
    scores, wrong = question_scores(ts)
    if score not in scores:
        raise ConfigError(f"score '{score}' is not available on '{ts.name}'", hint=f"available: {sorted(scores)}")
    s = scores[score]
    probs, _, labels = candidates(ts)
    size = (probs > 0).sum(axis=1)
    missed = labels == NONE  # no chain gave the right answer
    in_half, train = _roles(ts)
    cal = in_half & ~train  # the training role fixes both grids and never calibrates
    test = ~in_half
    half = delta / 2
    grid_a = _grid(s[train], int(cal.sum()), epsilon_answer, half, points)
    answered = s[:, None] >= grid_a[None, :]
    ja = _certify(answered[cal], wrong[cal], epsilon_answer, half)
    t_a = float(grid_a[ja]) if ja is not None else float("inf")
    single = s >= t_a
    # t_set grid from high to low: the first column outputs least (safest)
    grid_s = np.unique(np.quantile(s[train], np.linspace(0, 1, points)))[::-1] if train.any() else np.zeros(1)
    # the loss the claim counts, at the chosen t_answer: a single answer that is wrong, or a set with no right
    # candidate. t_answer was chosen on the same questions, so this sequence runs at delta / 2 / (the number of
    # t_answer values it could have taken): Bonferroni over them covers whichever was chosen.
    out_mask = s[:, None] >= grid_s[None, :]
    loss = ((single & wrong)[:, None] | (out_mask & ~single[:, None] & missed[:, None])).astype(np.float64)
    n_ta = len(grid_a) + 1  # every grid value, or none certified (t_answer = inf)
    js, cert_s, _, _ = calibrate_losses(loss[cal], risk="accuracy", epsilon=epsilon_set, delta=half / n_ta, method="binomial")
    # release exactly what was certified: below the certified t_set nothing is output (no capping at t_answer,
    # which would lower t_set and release more); at or above t_answer the single answer is the output
    t_s = float(grid_s[js]) if js is not None else float("inf")
    in_set = (s >= t_s) & ~single
    t = test
    n_t = max(int(t.sum()), 1)
    n_single = int((single & t).sum())
    return {
        "trace_set": ts.name, "score": score, "delta": delta, "epsilon_answer": epsilon_answer, "epsilon_set": epsilon_set,
        "t_answer": None if ja is None else t_a, "t_set": None if not np.isfinite(t_s) else t_s,
        "answer_certified": ja is not None, "set_certified": js is not None,
        "n_calibration": int(cal.sum()), "n_test": int(t.sum()),
        "single_share": n_single / n_t, "set_share": int((in_set & t).sum()) / n_t,
        "abstain_share": int((~single & ~in_set & t).sum()) / n_t,
        "mean_set_size": float(size[in_set & t].mean()) if (in_set & t).any() else None,
        "single_error": float(wrong[single & t].mean()) if n_single else 0.0,
        "output_miss": float((((single & wrong) | (in_set & missed)) & t).sum() / n_t),
        "guarantee": (f"error among single answers <= {epsilon_answer} and share of questions whose output (a single "
                      f"answer, or a set) has no right candidate <= {epsilon_set}, jointly with probability >= {1 - delta} "
                      f"(LTT for each at delta/2, Bonferroni; the second at delta/2/{n_ta} over the t_answer it may follow)"),
    }
