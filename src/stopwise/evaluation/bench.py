"""``stopwise bench``: every applicable family on every set, calibrated and tested.

For each trace set: split questions by hashed id into calibration and test
halves (:func:`stopwise.stats.split.split_mask`, the same everywhere); replay
every family that the set supports; calibrate each on the calibration half at
``delta / K`` (K = the number of families compared on that set, because a
reader picks the best of them on the same data); evaluate the chosen setting on
the test half: realized risk, accuracy, tokens saved net of probe cost, chains
saved, and the fraction of the epsilon-oracle's savings it reaches.

The epsilon-oracle is family-free: with hindsight, every unit may stop at any
logged probe (single-chain families) or after any number of chains (multi-chain
families), and the best total savings at a mean loss <= epsilon on the test
half is reported (:func:`stopwise.evaluation.oracle.epsilon_oracle`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from stopwise.rules.calibrate import calibrate_family, question_losses, question_mean, subset_result
from stopwise.policies.base import unit_losses
from stopwise.evaluation.oracle import epsilon_oracle, stop_anywhere_result
from stopwise.policies.base import MISSING
from stopwise.errors import ConfigError
from stopwise.policies.registry import family_names, get_family
from stopwise.stats.pvalues import min_certifiable_epsilon
from stopwise.stats.split import split_mask
from stopwise.traces.model import TraceSet

ROW_KEYS = (
    "trace_set", "policy", "threshold", "certified", "guarantee", "epsilon", "delta",
    "n_calibration", "test_risk", "accuracy_full", "accuracy_policy", "tokens_saved",
    "chains_saved", "oracle_fraction",
)


@dataclass
class BenchRow:
    trace_set: str
    policy: str
    threshold: float | None
    certified: bool
    guarantee: str
    epsilon: float
    delta: float
    n_calibration: int
    test_risk: float
    accuracy_full: float | None
    accuracy_policy: float | None
    tokens_saved: float
    chains_saved: float
    oracle_fraction: float | None
    # extras (not in the stable key list)
    risk: str = "disagreement"
    k_policies: int = 1
    n_test: int = 0
    p_value: float | None = None
    empirical_risk: float | None = None
    oracle_saved: float | None = None
    min_epsilon: float | None = None
    settings: dict | None = None
    # the one row per set and risk that bench would deploy: the largest saving on the calibration half
    # among certified rows (full compute when none saves)
    recommended: bool = False
    decision: str = ""
    calibration_saved: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SetBench:
    """Bench outcome of one trace set: rows plus what the report plots."""

    trace_set: str
    n_questions: int
    n_calibration: int
    n_test: int
    min_epsilon: float
    too_small: bool
    rows: list[BenchRow]
    curves: dict[str, dict[str, Any]]
    skipped: dict[str, str]
    oracle: dict[str, dict[str, Any]]


def brief_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A family's settings for a table row: a fitted model is summarized (its weights live in policy files)."""
    model = settings.get("model")
    if not isinstance(model, dict):
        return settings
    trained = model.get("trained_on") or {}
    return {**settings, "model": {
        "trained_on": [t.get("name") for t in trained.get("trace_sets", [])], "questions": trained.get("questions"),
        "features": len(model.get("features", [])), "C": model.get("C"),
    }}


def held_out_curves(res, test_questions: np.ndarray, n_questions: int, risk: str) -> dict[str, Any]:  # noqa: ANN001
    """A replayed family on the questions of ``test_questions`` (bool mask): the subset ``result`` and, per
    grid point, the question-level ``risk`` (for ``selective``: error among answered questions), the share of
    full-compute cost saved (probe tokens included) and the share of chains saved."""
    tres = subset_result(res, test_questions[res.unit_question])
    q_loss, _, _ = question_losses(tres, unit_losses(tres, risk), n_questions)
    if risk == "selective":
        n_ans = question_mean((~tres.abstained).astype(float), tres.unit_question, n_questions).sum(axis=0)
        risk_curve = np.where(n_ans > 0, q_loss.sum(axis=0) / np.maximum(n_ans, 1), 0.0)
    else:
        risk_curve = q_loss.mean(axis=0)
    cost_full = float(tres.cost_full.sum())
    chains_full = float(tres.chains_full.sum())
    g = len(res.grid)
    return {
        "result": tres,
        "risk": risk_curve,
        "saved": 1.0 - tres.cost.sum(axis=0) / cost_full if cost_full > 0 else np.zeros(g),
        "chains_saved": 1.0 - tres.chains.sum(axis=0) / chains_full if chains_full > 0 else np.zeros(g),
    }


def applicable_families(ts: TraceSet, families: Sequence[str] | None, risk: str) -> tuple[list[Any], dict[str, str]]:
    """The families (built with default settings) that can run on ``ts`` for ``risk``, and why the others cannot."""
    names = list(families) if families else family_names()
    if risk == "selective":
        names = [n for n in names if "abstain" in n]
    fams, skipped = [], {}
    for name in names:
        fam = get_family(name).fit_to(ts)
        why = fam.supports(ts)
        if why is None and risk != "selective" and "abstain" in name:
            why = "an abstention family: bench it with --risk selective"
        if why is None and risk in ("accuracy", "selective") and not ts.has("correct"):
            why = f"needs labels (correct) for the {risk} risk"
        if why is None:
            try:
                fam = fam.train(ts)
            except ConfigError as exc:
                why = f"cannot train on this set: {exc}"
        if why:
            skipped[name] = why
        else:
            fams.append(fam)
    return fams, skipped


def validate_set(
    ts: TraceSet,
    *,
    families: Sequence[str] | None = None,
    risk: str = "disagreement",
    epsilon: float = 0.05,
    delta: float = 0.1,
    n_calibration: int | None = None,
    draws: int = 500,
    seed: int = 0,
    calibrator: str = "ltt",
) -> list[dict[str, Any]]:
    """``stopwise validate`` on one set: LTT (or the broken ``calibrator="naive"``) and the naive control for every
    applicable family."""
    from stopwise.rules.calibrate import validate_family

    fams, _ = applicable_families(ts, families, risk)
    n = n_calibration or max(ts.n_questions // 2, 1)
    rows: list[dict[str, Any]] = []
    if n > ts.n_questions:
        return rows
    for fam in fams:
        res = fam.replay(ts)
        n_fam = n
        trained = fam.training_mask(ts)
        if trained is not None:  # the population is the questions the family did not learn from
            res = subset_result(res, ~trained[res.unit_question])
            n_fam = n_calibration or max(int((~trained).sum()) // 2, 1)
        rows += validate_family(res, ts.n_questions, risk=risk, epsilon=epsilon, delta=delta,
                                n_calibration=n_fam, draws=draws, seed=seed, trace_set=ts.name, calibrator=calibrator)
    return rows


#: rows whose negative control is built to fail (a population where the plug-in rule overshoots by design)
REQUIRED_CONTROLS = ("synthetic-control:naive",)


def validation_verdicts(rows: Sequence[dict[str, Any]], marginal: Sequence[dict[str, Any]] = (), *,
                        level: float = 0.01) -> tuple[bool, list[str]]:
    """``stopwise validate``'s verdict: whether the evidence is consistent with every guarantee, and why not.

    A guarantee row (a certified family, abstention score or cascade, and the synthetic LTT control) fails when the
    one-sided exact binomial test rejects "violation probability <= delta" at ``level`` divided by the number of
    guarantee rows (Bonferroni over the run: a correct calibrator fails a whole run with probability <= ``level``).
    A required negative control (:data:`REQUIRED_CONTROLS`) fails the run when it is *not* rejected at ``level``:
    then validate could not tell a broken calibrator from a sound one. Other negative controls (the naive rule on
    real sets, where its overshoot depends on the set's risk curve) are reported, not required. An expectation
    guarantee (answer sets, selection) fails when its mean over draws is outside its 99% bound. Each row gets a
    ``verdict``: "pass", "FAIL", "control rejected", "control not rejected" (or "control NOT REJECTED" where
    required).
    """
    guarantees = [r for r in rows if not _is_control(r["policy"])]
    per_row = level / max(len(guarantees), 1)
    problems: list[str] = []
    for r in rows:
        if _is_control(r["policy"]):
            rejected = r["p_value"] <= level
            required = r["policy"] in REQUIRED_CONTROLS
            r["verdict"] = "control rejected" if rejected else ("control NOT REJECTED" if required else "control not rejected")
            if required and not rejected:
                problems.append(f"{r['trace_set']} / {r['policy']}: the negative control was not rejected "
                                f"(violations {r['violation_frequency']:.1%}, p={r['p_value']:.3g} > {level:g})")
        else:
            r["verdict"] = "pass" if r["p_value"] > per_row else "FAIL"
            if r["verdict"] == "FAIL":
                problems.append(f"{r['trace_set']} / {r['policy']}: violation frequency {r['violation_frequency']:.1%} "
                                f"(95% CI {r['ci_low']:.1%}-{r['ci_high']:.1%}) exceeds delta {r['delta']:g} "
                                f"(binomial p={r['p_value']:.3g} <= {level:g}/{len(guarantees)})")
    for m in marginal:
        m["verdict"] = "pass" if m["consistent"] else "FAIL"
        if not m["consistent"]:
            problems.append(f"{m.get('trace_set', '?')} / {m['check']}: the mean over draws is outside its 99% bound")
    return not problems, problems


def _is_control(policy: str) -> bool:
    return policy.startswith("naive-control") or policy == "synthetic-control:naive"


def validate_controls(*, epsilon: float, delta: float, draws: int, seed: int = 0) -> list[dict[str, Any]]:
    """Synthetic losses with a closed-form risk: LTT must hold, the naive calibrator must violate."""
    from stopwise.rules.calibrate import validation_row
    from stopwise.stats.validate import ltt_calibrator, naive_calibrator, synthetic_population, validate_calibrator

    pop, _ = synthetic_population(600, 50, seed=seed)
    rows = []
    for label, cal in (("synthetic-control:ltt", ltt_calibrator(epsilon, delta, "binomial")), ("synthetic-control:naive", naive_calibrator(epsilon))):
        v = validate_calibrator(pop, 100, draws, cal, epsilon, delta, seed=seed)
        rows.append(validation_row(v, trace_set="synthetic (closed-form risk)", policy=label, risk="synthetic", method="binomial"))
    return rows


FULL_COMPUTE = "full_compute"


def recommend(rows: list[BenchRow]) -> None:
    """Mark the one row to deploy: the certified row that saves most on the calibration half (never the test
    half), or the full-compute row when none saves. Every family was certified at delta/K, so the pick among
    them keeps the guarantee."""
    paying = [r for r in rows if r.certified and r.policy != FULL_COMPUTE and r.calibration_saved > 0]
    best = max(paying, key=lambda r: r.calibration_saved, default=None)
    for r in rows:
        r.recommended = r is best if best is not None else r.policy == FULL_COMPUTE


def bench_set(
    ts: TraceSet,
    *,
    families: Sequence[str] | None = None,
    risk: str = "disagreement",
    epsilon: float = 0.05,
    delta: float = 0.1,
    seed: int = 0,
    chain_mode: str = "mean",
    select: str = "cost",
    progress: Callable[[str], None] | None = None,
) -> SetBench:
    """Calibrate every applicable family on the calibration half of ``ts`` and test it on the other half.

    Each family deploys its cheapest certified setting on the calibration half (``select="cost"``), full
    compute where none pays; a ``full_compute`` row (risk 0, nothing saved) closes the table, and one row is
    ``recommended``."""
    qids = ts.questions.column("question_id").to_pylist()
    calib = split_mask(qids)
    test = ~calib
    n_cal, n_test = int(calib.sum()), int(test.sum())
    fams, skipped = applicable_families(ts, families, risk)
    k = max(len(fams), 1)
    min_eps = min_certifiable_epsilon(max(n_cal, 1), delta / k, "binomial")
    rows: list[BenchRow] = []
    curves: dict[str, dict[str, Any]] = {}
    oracles: dict[str, dict[str, Any]] = {}
    for kind in ("single", "multi"):
        if any(f.kind == kind for f in fams):
            res = stop_anywhere_result(ts, kind)
            test_res = subset_result(res, test[res.unit_question])
            oracles[kind] = epsilon_oracle(test_res, epsilon, unit_losses(test_res, "accuracy" if risk == "accuracy" else "disagreement"))
    for fam in fams:
        if progress:
            progress(f"{ts.name}: {fam.name}")
        res = fam.replay(ts)
        trained = fam.training_mask(ts)
        fam_calib = calib if trained is None else calib & ~trained
        n_cal_fam = int(fam_calib.sum())
        cal = calibrate_family(res, fam_calib, ts.n_questions, risk=risk, epsilon=epsilon, delta=delta, k_policies=k,
                               chain_mode=chain_mode, seed=seed, select=select)
        held = held_out_curves(res, test, ts.n_questions, risk)
        tres, risk_curve, saved_curve = held["result"], held["risk"], held["saved"]
        ref = tres.correct_class
        has_labels = ts.has("correct") and (ref != MISSING).any()
        correct = ((tres.answer == ref[:, None]) & ~tres.abstained & (ref[:, None] != MISSING)).astype(float)
        correct_full = ((tres.answer_full == ref) & (ref != MISSING)).astype(float)
        acc_curve = question_mean(correct, tres.unit_question, ts.n_questions).mean(axis=0) if has_labels else None
        acc_full = float(question_mean(correct_full, tres.unit_question, ts.n_questions).mean()) if has_labels else None
        j = cal.index
        curves[fam.name] = {
            "grid": res.grid.tolist(),
            "cost_fraction": (1.0 - saved_curve).tolist(),
            "accuracy": None if acc_curve is None else acc_curve.tolist(),
            "risk": risk_curve.tolist(),
            "accuracy_full": acc_full,
            "certified_index": j,
        }
        oracle = oracles.get(fam.kind, {})
        if j is None:
            test_risk, tokens_saved, chains_saved = 0.0, 0.0, 0.0
            acc_pol = acc_full
        else:
            test_risk = float(risk_curve[j])
            tokens_saved = float(saved_curve[j])
            chains_saved = float(held["chains_saved"][j])
            acc_pol = None if acc_curve is None else float(acc_curve[j])
        osaved = oracle.get("saved")
        rows.append(
            BenchRow(
                trace_set=ts.name, policy=fam.name, threshold=cal.threshold, certified=cal.certified,
                guarantee=cal.certificate.guarantee, epsilon=epsilon, delta=delta, n_calibration=n_cal_fam,
                test_risk=test_risk, accuracy_full=acc_full, accuracy_policy=acc_pol,
                tokens_saved=tokens_saved, chains_saved=chains_saved,
                oracle_fraction=(tokens_saved / osaved) if osaved and osaved > 0 else None,
                risk=risk, k_policies=k, n_test=n_test, p_value=cal.certificate.p_value,
                empirical_risk=cal.certificate.empirical_risk, oracle_saved=osaved,
                min_epsilon=min_eps if trained is None else min_certifiable_epsilon(max(n_cal_fam, 1), delta / k, "binomial"),
                settings=brief_settings(fam.settings()), decision=cal.decision, calibration_saved=cal.calibration_saved,
            )
        )
    if rows:
        base = rows[0]
        rows.append(BenchRow(
            trace_set=ts.name, policy=FULL_COMPUTE, threshold=None, certified=True, guarantee=base.guarantee,
            epsilon=epsilon, delta=delta, n_calibration=n_cal, test_risk=0.0, accuracy_full=None,
            accuracy_policy=None, tokens_saved=0.0, chains_saved=0.0, oracle_fraction=None,
            risk=risk, k_policies=k, n_test=n_test, p_value=None, empirical_risk=0.0, oracle_saved=None,
            min_epsilon=min_eps, settings={}, decision="full compute (risk 0 by definition, no test needed)",
        ))
        recommend(rows)
    return SetBench(ts.name, ts.n_questions, n_cal, n_test, min_eps, min_eps > epsilon, rows, curves, skipped, oracles)
