"""Certified calibration of a policy family on replayed traces.

This is the glue between replay (per-unit decisions over a grid) and the
statistics (:mod:`stopwise.stats`, which sees only loss arrays):

1. losses per *unit* and grid point (:func:`unit_losses`);
2. losses per *question* (:func:`question_losses`): the unit of calibration is
   the question, never the chain. For single-chain families on multi-chain
   sets, a question's loss is either the mean over its chains (then
   Hoeffding-Bentkus p-values) or the loss of one chain drawn per question with
   a recorded seed (then exact binomial p-values);
3. Learn-then-Test with fixed-sequence testing from the safe end of the grid
   (:func:`calibrate_family`), or conformal risk control on monotonized losses.

Risks
-----
``disagreement``
    The returned answer differs from the full-compute answer of the same
    family, or is missing (a missing early answer is always a loss), or the
    policy abstained. Needs no labels.
``accuracy``
    The full-compute answer is correct and the early answer is not. Needs labels.
``selective``
    Error rate among answered questions (abstentions excluded), for abstention
    families. The grid is tested from the most abstaining setting towards the
    least; each p-value is the exact binomial tail on the answered questions
    (valid conditionally on which questions are answered). The abstention rate
    is reported.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stopwise.errors import ConfigError, UnknownNameError
from stopwise.policies.base import ReplayResult, unit_losses
from stopwise.stats import Certificate, cheapest_certified, conformal_risk_control, learn_then_test
from stopwise.stats.pvalues import binomial_pvalue
from stopwise.stats.ltt import fixed_sequence

CHAIN_MODES = ("mean", "draw")


def question_losses(
    result: ReplayResult,
    losses: np.ndarray,
    n_questions: int,
    *,
    chain_mode: str = "mean",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Aggregate unit losses to one row per question.

    Returns
    -------
    (losses, questions, method)
        ``losses`` (Q', G) for the Q' questions that have units, ``questions``
        their row indices, and the p-value method that is valid for them:
        "binomial" when every row is 0/1 (one unit per question, or
        ``chain_mode="draw"``), "hb" otherwise.
    """
    if chain_mode not in CHAIN_MODES:
        raise UnknownNameError("chain mode", chain_mode, CHAIN_MODES)
    uq = result.unit_question
    counts = np.bincount(uq, minlength=n_questions)
    questions = np.flatnonzero(counts > 0)
    if result.unit == "question" or counts.max(initial=0) <= 1:
        order = np.argsort(uq, kind="stable")
        return losses[order], uq[order], "binomial"
    if chain_mode == "draw":
        rng = np.random.default_rng(seed)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        order = np.argsort(uq, kind="stable")
        pick = offsets[questions] + rng.integers(0, counts[questions])
        return losses[order[pick]], questions, "binomial"
    return question_mean(losses, uq, n_questions), questions, "hb"


def question_mean(values: np.ndarray, unit_question: np.ndarray, n_questions: int) -> np.ndarray:
    """Per-question mean of per-unit ``values`` (U, ...), for the questions that have units, in question order."""
    counts = np.bincount(unit_question, minlength=n_questions)
    sums = np.zeros((n_questions,) + values.shape[1:])
    np.add.at(sums, unit_question, values)
    has = counts > 0
    return sums[has] / counts[has].reshape((-1,) + (1,) * (values.ndim - 1))


KEEP_FULL = "no saving: keep full compute"


@dataclass
class Calibration:
    """The outcome of calibrating one family on one calibration split.

    ``index`` is the setting to deploy: the cheapest certified one on the
    calibration data (``select="cost"``) or the most aggressive certified one
    (``select="aggressive"``, plain Learn-then-Test). It is ``None`` when
    nothing was certified, and also when certified settings exist but none
    costs less than full compute on the calibration data (``keep_full``): then
    the recommendation is to keep full compute. ``certified_index`` is the last
    setting fixed-sequence testing certified, whatever was chosen.
    ``costs`` and ``full_cost`` are the expected cost per question on the
    calibration data (generated plus probe tokens, plus ``latency_weight``
    times the latency in tokens) of each setting and of full compute.
    """

    family: str
    risk: str
    index: int | None
    threshold: float | None
    certificate: Certificate
    p_values: np.ndarray
    risks: np.ndarray
    coverage: np.ndarray | None = None  # share answered per grid point (selective risk)
    notes: list[str] = field(default_factory=list)
    certified_index: int | None = None
    costs: np.ndarray | None = None
    full_cost: float | None = None
    select: str = "cost"

    @property
    def certified(self) -> bool:
        """Whether a certified setting is deployed (False when nothing was certified or nothing pays)."""
        return self.certificate.certified and self.index is not None

    @property
    def keep_full(self) -> bool:
        """Certified settings exist, but none costs less than full compute on the calibration data."""
        return self.certificate.certified and self.index is None

    @property
    def calibration_saved(self) -> float:
        """The share of full-compute cost the deployed setting saves on the calibration data (0: full compute)."""
        if self.index is None or self.costs is None or not self.full_cost:
            return 0.0
        return float(1.0 - self.costs[self.index] / self.full_cost)

    @property
    def decision(self) -> str:
        """In words: the setting deployed, or why none is."""
        if self.index is not None:
            return f"deploy {self.family} at {self.threshold:g}"
        return KEEP_FULL if self.keep_full else "nothing certified: keep full compute"


SELECT_MODES = ("cost", "aggressive")


def calibration_costs(result: ReplayResult, n_questions: int, latency_weight: float = 0.0) -> tuple[np.ndarray, float]:
    """Expected cost per question of each grid point and of full compute, over the units of ``result``.

    Cost is generated plus probe tokens (what the live driver spends), plus ``latency_weight`` times the
    latency in tokens (the longest live chain, probes included) for a user who also pays for wall-clock.
    Each question weighs the same; a question's cost is the sum over its units.
    """
    uq = result.unit_question
    has = np.bincount(uq, minlength=n_questions) > 0
    nq = max(int(has.sum()), 1)
    cost = result.cost.astype(float) + latency_weight * result.latency.astype(float)
    full = result.cost_full.astype(float) + latency_weight * result.latency_full.astype(float)
    return cost.sum(axis=0) / nq, float(full.sum()) / nq


def calibrate_losses(
    losses: np.ndarray,
    *,
    risk: str,
    epsilon: float,
    delta: float,
    method: str,
    k_policies: int = 1,
    guarantee: str = "pac",
    answered: np.ndarray | None = None,
) -> tuple[int | None, Certificate, np.ndarray, np.ndarray]:
    """Choose a grid index from per-question losses (Q, G); returns (index, certificate, p-values, risks)."""
    if guarantee == "marginal":
        if risk == "selective":
            raise ConfigError("conformal risk control is not offered for the selective risk", hint="use --guarantee pac")
        res = conformal_risk_control(losses, epsilon)
        return res.index, res.certificate, np.full(losses.shape[1], np.nan), res.risks
    if guarantee != "pac":
        raise UnknownNameError("guarantee", guarantee, ("pac", "marginal"))
    if risk != "selective":
        res = learn_then_test(losses, epsilon, delta, method=method, k_policies=k_policies)
        return res.index, res.certificate, res.p_values, res.risks
    # selective risk: test from the most abstaining setting (last column) towards the least
    if answered is None:
        raise ConfigError("selective risk needs the answered mask")
    n_ans = answered.sum(axis=0)
    k = losses.sum(axis=0)
    risks = np.where(n_ans > 0, k / np.maximum(n_ans, 1), 0.0)
    level = delta / k_policies
    p = np.array([binomial_pvalue(r, int(n), epsilon) if n > 0 else 1.0 for r, n in zip(risks, n_ans)])
    order = np.arange(losses.shape[1])[::-1]
    last = fixed_sequence(p[order], level)
    index = None if last is None else int(order[last])
    j = index if index is not None else int(order[0])
    cert = Certificate(
        guarantee="pac", epsilon=float(epsilon), delta=float(delta), delta_per_test=float(level),
        k_policies=int(k_policies), n=int(losses.shape[0]), empirical_risk=float(risks[j]),
        p_value=float(p[j]), certified=index is not None, index=index, method="binomial",
    )
    return index, cert, p, risks


def calibrate_family(
    result: ReplayResult,
    calib_questions: np.ndarray,
    n_questions: int,
    *,
    risk: str = "disagreement",
    epsilon: float = 0.05,
    delta: float = 0.1,
    k_policies: int = 1,
    chain_mode: str = "mean",
    seed: int = 0,
    guarantee: str = "pac",
    select: str = "cost",
    latency_weight: float = 0.0,
) -> Calibration:
    """Calibrate a replayed family on the questions in ``calib_questions`` (a boolean mask over questions).

    ``select="cost"`` (the default) deploys the cheapest certified setting on the calibration questions,
    with full compute always a candidate (see :func:`stopwise.stats.cheapest_certified`): a setting that
    costs more than full compute is never deployed. ``select="aggressive"`` is plain Learn-then-Test, the
    most aggressive certified setting, whatever it costs. For the selective risk (abstention trades
    coverage, not tokens) and conformal risk control (whose guarantee holds for its own setting only),
    the setting is the procedure's own, and it is still replaced by full compute where it does not pay.
    """
    if select not in SELECT_MODES:
        raise UnknownNameError("selection", select, SELECT_MODES)
    if latency_weight < 0:
        raise ConfigError(f"latency weight {latency_weight} is negative", hint="give a weight >= 0 (tokens per token of latency)")
    losses = unit_losses(result, risk)
    keep = calib_questions[result.unit_question]
    sub = subset_result(result, keep)
    q_losses, _, method = question_losses(sub, losses[keep], n_questions, chain_mode=chain_mode, seed=seed)
    answered = None
    coverage = None
    if risk == "selective":
        if sub.unit != "question":
            raise ConfigError("the selective risk applies to multi-chain (per-question) families")
        answered = ~sub.abstained[np.argsort(sub.unit_question, kind="stable")]
        coverage = answered.mean(axis=0) if len(answered) else None
    index, cert, p, risks = calibrate_losses(
        q_losses, risk=risk, epsilon=epsilon, delta=delta, method=method,
        k_policies=k_policies, guarantee=guarantee, answered=answered,
    )
    costs, full_cost = calibration_costs(sub, n_questions, latency_weight)
    chosen = index
    if index is not None:
        if select == "cost" and guarantee == "pac" and risk != "selective":
            chosen = cheapest_certified(costs, index, full_cost)
        elif select == "cost" and risk != "selective" and not costs[index] < full_cost:
            chosen = None  # the procedure's own setting does not pay
    if chosen is not None and chosen != index:
        cert = dataclasses.replace(cert, index=chosen, empirical_risk=float(risks[chosen]),
                                   p_value=None if cert.p_value is None else float(p[chosen]))
    threshold = None if chosen is None else float(result.grid[chosen])
    notes = [KEEP_FULL] if index is not None and chosen is None else []
    return Calibration(result.family, risk, chosen, threshold, cert, p, risks, coverage, notes,
                       certified_index=index, costs=costs, full_cost=full_cost, select=select)


def subset_result(result: ReplayResult, keep: np.ndarray) -> ReplayResult:
    """The units of ``result`` selected by the boolean mask ``keep``."""
    kw: dict[str, Any] = {}
    for name, value in vars(result).items():
        if isinstance(value, np.ndarray) and value.shape[:1] == keep.shape and name != "grid":
            kw[name] = value[keep]
        else:
            kw[name] = value
    return ReplayResult(**kw)



# --- policy files ---------------------------------------------------------------------

POLICY_FILE_VERSION = 1


def policy_file(family: Any, calibration: Calibration, ts: Any, *, risk: str, chain_mode: str) -> dict[str, Any]:
    """The JSON document ``stopwise calibrate`` writes: family, settings, certificate, scope."""
    prov = ts.provenance
    return {
        "format": "stopwise-policy",
        "version": POLICY_FILE_VERSION,
        "family": family.name,
        "kind": family.kind,
        "settings": family.settings(),
        "knob": family.knob,
        "grid": [float(x) for x in family.grid],
        "index": calibration.index,
        "threshold": calibration.threshold,
        # how the deployed setting was chosen among the certified ones, and what it costs
        "selection": {
            "mode": calibration.select,
            "decision": calibration.decision,
            "certified_up_to_index": calibration.certified_index,
            "calibration_cost_per_question": None if calibration.index is None or calibration.costs is None
            else float(calibration.costs[calibration.index]),
            "full_compute_cost_per_question": calibration.full_cost,
            "calibration_saved": calibration.calibration_saved,
        },
        "risk": risk,
        "chain_mode": chain_mode,
        "certificate": calibration.certificate.to_dict(),
        "trace_set": {"name": ts.name, "content_hash": ts.content_hash, "questions": ts.n_questions, "chains": ts.n_chains},
        # what full compute costs on the calibration traffic, so that a server can estimate the tokens a
        # stopped chain (or a chain never drawn) would have cost: 21 quantiles of chain length
        "full_compute": {
            "chain_length_quantiles": [float(v) for v in np.quantile(np.asarray(ts.column("n_tokens", fill=0), dtype=float),
                                                                       np.linspace(0, 1, 21))] if ts.n_chains else [],
            "chains_per_question": int(np.median(ts.chain_counts)) if ts.n_questions else 0,
        },
        "conditions": {
            "model": prov.model,
            "model_sha256": prov.model_sha256,
            "tokenizer": prov.tokenizer,
            "chat_template": prov.chat_template,
            "sampling": prov.sampling,
            "forcing_string": prov.forcing_string,
            "probe_schedule": prov.probe_schedule,
            "logprob_convention": prov.logprob_convention,
        },
    }


# --- empirical validation ---------------------------------------------------------------

#: what ``stopwise validate --calibrator`` may put under test: Learn-then-Test, or the broken plug-in rule
VALIDATE_CALIBRATORS = ("ltt", "naive")


def population_losses(result: ReplayResult, n_questions: int, risk: str) -> tuple[np.ndarray, str]:
    """Per-question losses over the whole set (the population) and their valid p-value method."""
    losses, _, method = question_losses(result, unit_losses(result, risk), n_questions)
    return losses, method


def validation_row(v: Any, *, trace_set: str, policy: str, risk: str, method: str, **extra: Any) -> dict[str, Any]:
    """One ``stopwise validate`` row from a :class:`~stopwise.stats.validate.ValidationResult`."""
    return {
        "trace_set": trace_set, "policy": policy, "risk": risk, "epsilon": v.epsilon, "delta": v.delta,
        "n_calibration": v.n_calibration, "draws": v.draws, "violation_frequency": v.violation_frequency,
        "ci_low": v.ci_low, "ci_high": v.ci_high, "consistent": bool(v.consistent), "p_value": v.p_value,
        "uncertified_draws": v.uncertified, "method": method, **extra,
    }


def validate_family(
    result: ReplayResult,
    n_questions: int,
    *,
    risk: str = "disagreement",
    epsilon: float = 0.05,
    delta: float = 0.1,
    n_calibration: int | None = None,
    draws: int = 500,
    seed: int = 0,
    trace_set: str = "",
    calibrator: str = "ltt",
) -> list[dict[str, Any]]:
    """Check LTT on a family empirically, with the naive calibrator as a negative control.

    The whole set is the population; each draw calibrates on ``n_calibration``
    questions and the chosen setting's exact population risk is compared with
    epsilon. Returns one row for LTT and one for the naive control.
    ``calibrator="naive"`` puts the plug-in rule (no statistical correction) in
    LTT's place under the family's own name: a deliberately broken calibrator,
    for checking that ``stopwise validate`` fails and names the family.
    """
    from stopwise.stats.validate import ltt_calibrator, naive_calibrator, validate_calibrator

    if calibrator not in VALIDATE_CALIBRATORS:
        raise UnknownNameError("calibrator", calibrator, VALIDATE_CALIBRATORS)

    if risk == "selective":
        raise ConfigError("validate supports the disagreement and accuracy risks", hint="use --risk disagreement or accuracy")
    pop, method = population_losses(result, n_questions, risk)
    n = n_calibration or max(len(pop) // 2, 1)
    if n > len(pop):
        raise ConfigError(f"--n-calibration {n} exceeds the {len(pop)} questions of the set")
    rows = []
    main = ltt_calibrator(epsilon, delta, method) if calibrator == "ltt" else naive_calibrator(epsilon)
    for label, cal in ((result.family, main), (f"naive-control:{result.family}", naive_calibrator(epsilon))):
        v = validate_calibrator(pop, n, draws, cal, epsilon, delta, seed=seed)
        rows.append(validation_row(v, trace_set=trace_set, policy=label, risk=risk, method=method,
                                   max_population_risk=float(pop.mean(axis=0).max())))
    return rows
