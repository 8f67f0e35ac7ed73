"""Check a calibration procedure's guarantee empirically, by resampling.

Given a finite *population* of units with known losses under every setting, a
calibration procedure is run on many random calibration subsets. Each run picks
a setting; the run is a *violation* when that setting's population risk (the
mean loss over the whole population) exceeds ``epsilon``. A PAC procedure at
level ``delta`` must violate in at most a fraction ``delta`` of the runs; this
module counts violations and tests that claim with an exact binomial test.

Nothing here knows what a unit or a setting is. Two calibrators are provided:
:func:`ltt_calibrator` (Learn-then-Test, should pass) and
:func:`naive_calibrator` (plug-in risk, no correction: the negative control,
should fail when many settings sit just above ``epsilon``).
:func:`synthetic_population` builds a positive-control population whose
per-setting risks are known in closed form.

Notes
-----
Calibration subsets are drawn *without replacement* from a finite population,
which is how a user splits a fixed trace set. Sampling without replacement is
at least as concentrated as i.i.d. sampling (Hoeffding 1963, Sec. 6), so the
Hoeffding-Bentkus guarantee carries over; the exact binomial p-value is then
slightly conservative rather than exact.

References
----------
.. [1] A. N. Angelopoulos, S. Bates, E. J. Candes, M. I. Jordan, L. Lei,
   "Learn then Test", arXiv:2110.01052, 2021 (Sec. 6, empirical validity
   checks over random calibration splits).
.. [2] W. Hoeffding, "Probability inequalities for sums of bounded random
   variables", JASA 58(301), 1963.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

from stopwise.errors import ConfigError
from stopwise.stats.ltt import check_level, check_losses, cheapest_certified, learn_then_test
from stopwise.stats.pvalues import clopper_pearson

__all__ = [
    "CONSISTENCY_LEVEL",
    "Calibrator",
    "ValidationResult",
    "cost_aware_calibrator",
    "ltt_calibrator",
    "naive_calibrator",
    "synthetic_population",
    "validate_calibrator",
    "validation_result",
]

Calibrator = Callable[[np.ndarray], "int | None"]
"""A calibration procedure: ``(n, G)`` losses in, chosen column (or ``None``) out."""

CONSISTENCY_LEVEL = 0.01
"""Significance level of the test behind :attr:`ValidationResult.consistent`.

A calibrator is declared inconsistent with its claimed ``delta`` when the
one-sided exact binomial test rejects ``violation probability <= delta`` at
this level. 1% keeps false alarms rare when the suite is run often.
"""


@dataclass(frozen=True)
class ValidationResult:
    """Outcome of :func:`validate_calibrator`.

    Attributes
    ----------
    violations : int
        Draws whose selected setting has population risk ``> epsilon``.
    draws : int
        Number of calibration draws.
    violation_frequency : float
        ``violations / draws``.
    ci_low, ci_high : float
        Two-sided 95% Clopper-Pearson interval for the violation probability.
    p_value : float
        One-sided exact binomial p-value for ``H0: violation probability <= delta``
        (alternative "greater").
    consistent : bool
        ``p_value > CONSISTENCY_LEVEL`` (0.01): the data do not contradict the
        claimed guarantee.
    epsilon, delta : float
        The claimed guarantee.
    n_calibration : int
        Units per calibration draw.
    uncertified : int
        Draws where the calibrator returned ``None`` (fell back to full
        compute); they never count as violations.
    """

    violations: int
    draws: int
    violation_frequency: float
    ci_low: float
    ci_high: float
    p_value: float
    consistent: bool
    epsilon: float
    delta: float
    n_calibration: int
    uncertified: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be a positive integer; got {value!r}")
    if value < 1:
        raise ConfigError(f"{name} must be >= 1; got {value}")
    return int(value)


def validate_calibrator(
    population_losses: Any,
    n_calibration: int,
    draws: int,
    calibrate: Calibrator,
    epsilon: float,
    delta: float,
    *,
    seed: int | None = 0,
) -> ValidationResult:
    """Estimate how often ``calibrate`` picks a setting with risk above ``epsilon``.

    Parameters
    ----------
    population_losses : array_like, shape (N, G)
        Losses of the whole population of units, in [0, 1]; columns ordered
        safest first. The population mean of each column is its true risk.
    n_calibration : int
        Units per calibration draw, ``1 <= n_calibration <= N``.
    draws : int
        Number of independent calibration draws.
    calibrate : callable
        ``calibrate(sub_losses) -> int | None`` with ``sub_losses`` of shape
        ``(n_calibration, G)``; returns the chosen column or ``None``.
    epsilon : float
        Risk level the calibrator claims to control, in (0, 1).
    delta : float
        Claimed bound on the probability of a violation, in (0, 1).
    seed : int or None, default 0
        Seed of the :class:`numpy.random.Generator` that draws the subsets.

    Returns
    -------
    ValidationResult

    Raises
    ------
    ConfigError
        On bad inputs, or when ``calibrate`` returns something that is not a
        valid column index or ``None``.

    Notes
    -----
    A ``None`` from ``calibrate`` means nothing was certified and the user
    falls back to the full-compute behaviour, which by definition has zero
    risk (the loss measures the damage *relative to* full compute), so it is
    never a violation. A calibrator that always returns ``None`` is therefore
    valid but useless; look at :attr:`ValidationResult.uncertified`.

    Examples
    --------
    >>> losses, risks = synthetic_population(600, 50, seed=0)
    >>> res = validate_calibrator(losses, 100, 200, ltt_calibrator(0.1, 0.1), 0.1, 0.1)
    >>> res.consistent
    True
    """
    pop = check_losses(population_losses, name="population_losses")
    n_pop, n_settings = pop.shape
    n_calibration = _check_positive_int(n_calibration, "n_calibration")
    if n_calibration > n_pop:
        raise ConfigError(
            f"n_calibration={n_calibration} exceeds the population size {n_pop}",
            hint="draws are without replacement; use a smaller n_calibration",
        )
    draws = _check_positive_int(draws, "draws")
    if not callable(calibrate):
        raise ConfigError(f"calibrate must be callable; got {type(calibrate).__name__}")
    epsilon = check_level(epsilon, "epsilon")
    delta = check_level(delta, "delta")

    true_risks = pop.mean(axis=0)
    exceeds = true_risks > epsilon
    rng = np.random.default_rng(seed)
    violations = 0
    uncertified = 0
    for _ in range(draws):
        rows = rng.choice(n_pop, size=n_calibration, replace=False)
        index = calibrate(pop[rows])
        if index is None:
            uncertified += 1
            continue
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise ConfigError(
                f"calibrate returned {index!r}; expected a column index or None",
            )
        if not 0 <= index < n_settings:
            raise ConfigError(
                f"calibrate returned column {index}, outside 0..{n_settings - 1}",
            )
        violations += bool(exceeds[index])

    return validation_result(violations, draws, epsilon=epsilon, delta=delta, n_calibration=n_calibration, uncertified=uncertified)


def validation_result(violations: int, draws: int, *, epsilon: float, delta: float, n_calibration: int,
                      uncertified: int) -> ValidationResult:
    """The verdict on ``violations`` out of ``draws``: Clopper-Pearson 95% interval and the exact one-sided
    binomial test of ``H0: violation probability <= delta`` (consistent when its p-value exceeds
    :data:`CONSISTENCY_LEVEL`). Shared by every validator, whatever draws the calibrations."""
    ci_low, ci_high = clopper_pearson(violations, draws, 0.05)
    p_value = float(stats.binomtest(violations, draws, delta, alternative="greater").pvalue)
    return ValidationResult(
        violations=int(violations),
        draws=draws,
        violation_frequency=violations / draws,
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        p_value=p_value,
        consistent=p_value > CONSISTENCY_LEVEL,
        epsilon=epsilon,
        delta=delta,
        n_calibration=n_calibration,
        uncertified=int(uncertified),
    )


# ---------------------------------------------------------------------- calibrators


def naive_calibrator(epsilon: float) -> Calibrator:
    """Plug-in calibrator with no statistical correction (the negative control).

    Picks the most aggressive column whose calibration mean loss is
    ``<= epsilon``, or ``None`` if there is none. It ignores sampling noise and
    the multiplicity of the grid, so it overshoots ``epsilon`` often when many
    columns sit just above it.

    Parameters
    ----------
    epsilon : float
        Risk level, in (0, 1).

    Returns
    -------
    callable
        ``(n, G)`` losses -> column index or ``None``.

    Examples
    --------
    >>> import numpy as np
    >>> naive_calibrator(0.1)(np.array([[0.0, 0.1, 0.5], [0.0, 0.1, 0.0]]))
    1
    """
    eps = check_level(epsilon, "epsilon")

    def calibrate(losses: np.ndarray) -> int | None:
        ok = np.flatnonzero(np.asarray(losses, dtype=float).mean(axis=0) <= eps)
        return int(ok[-1]) if ok.size else None

    return calibrate


def ltt_calibrator(
    epsilon: float,
    delta: float,
    method: Literal["binomial", "hb"] = "hb",
    *,
    k_policies: int = 1,
) -> Calibrator:
    """Learn-then-Test calibrator: :func:`~stopwise.stats.ltt.learn_then_test` as a callable.

    Parameters
    ----------
    epsilon, delta : float
        Guarantee level, each in (0, 1).
    method : {"hb", "binomial"}, default "hb"
        p-value used for each test.
    k_policies : int, default 1
        Bonferroni factor.

    Returns
    -------
    callable
        ``(n, G)`` losses -> column index or ``None``.

    Examples
    --------
    >>> import numpy as np
    >>> ltt_calibrator(0.1, 0.1)(np.zeros((60, 4)))
    3
    """
    eps = check_level(epsilon, "epsilon")
    dlt = check_level(delta, "delta")
    # Fail now, not on the first draw, for a bad method or k_policies.
    learn_then_test(np.zeros((1, 1)), eps, dlt, method=method, k_policies=k_policies)

    def calibrate(losses: np.ndarray) -> int | None:
        return learn_then_test(losses, eps, dlt, method=method, k_policies=k_policies).index

    return calibrate


def cost_aware_calibrator(
    epsilon: float,
    delta: float,
    cost: Callable[[np.ndarray], np.ndarray],
    method: Literal["binomial", "hb"] = "hb",
    *,
    full_cost: float = np.inf,
    k_policies: int = 1,
) -> Calibrator:
    """Learn-then-Test, then the cheapest certified setting (:func:`~stopwise.stats.ltt.cheapest_certified`).

    ``cost`` maps the draw's ``(n, G)`` losses to a cost per column, so the choice may use the
    calibration data in any way (an adversarial ``cost`` picks the certified setting with the
    highest calibration risk). Fixed-sequence testing controls the family-wise error, so every
    such choice keeps the guarantee; the validity suite checks it. Returns ``None`` (full
    compute) where no certified column costs less than ``full_cost``.

    Examples
    --------
    >>> import numpy as np
    >>> cost_aware_calibrator(0.1, 0.1, lambda l: np.array([3.0, 1.0, 2.0, 5.0]))(np.zeros((60, 4)))
    1
    """
    eps = check_level(epsilon, "epsilon")
    dlt = check_level(delta, "delta")
    learn_then_test(np.zeros((1, 1)), eps, dlt, method=method, k_policies=k_policies)

    def calibrate(losses: np.ndarray) -> int | None:
        last = learn_then_test(losses, eps, dlt, method=method, k_policies=k_policies).index
        return cheapest_certified(np.asarray(cost(losses), dtype=float), last, full_cost)

    return calibrate


# ----------------------------------------------------------------------- population


def synthetic_population(
    n_units: int,
    grid: int | Any,
    seed: int | None = 0,
    *,
    max_risk: float = 0.3,
    nested: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """A population of 0/1 losses whose per-column risks are known exactly.

    Column ``j`` has exactly ``k_j = round(p_j * n_units)`` losing units, so
    its population risk is ``k_j / n_units`` in closed form.

    Parameters
    ----------
    n_units : int
        Number of units (rows) ``N``.
    grid : int or array_like of float
        Either the number of columns ``G``, in which case the target risks
        rise linearly, ``p = linspace(0, max_risk, G)`` (so with the default
        ``max_risk`` many columns sit just above a typical ``epsilon = 0.1``),
        or the non-decreasing target risks ``p_j`` themselves, in [0, 1].
    seed : int or None, default 0
        Seed of the generator that shuffles units.
    max_risk : float, default 0.3
        Largest risk when ``grid`` is an int.
    nested : bool, default True
        If true, every unit has one random rank and loses under column ``j``
        when its rank is below ``k_j``: losses are monotone along the grid, as
        in early stopping (a unit hurt by a safe setting is hurt by every more
        aggressive one). If false, each column picks its losing units
        independently.

    Returns
    -------
    losses : numpy.ndarray, shape (N, G)
        0/1 losses.
    true_risks : numpy.ndarray, shape (G,)
        Exact population risk of each column (equal to ``losses.mean(axis=0)``).

    Examples
    --------
    >>> losses, risks = synthetic_population(10, [0.0, 0.3, 0.5], seed=1)
    >>> risks.tolist()
    [0.0, 0.3, 0.5]
    """
    n_units = _check_positive_int(n_units, "n_units")
    if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
        g = _check_positive_int(grid, "grid")
        if not (0.0 <= float(max_risk) <= 1.0) or math.isnan(float(max_risk)):
            raise ConfigError(f"max_risk must lie in [0, 1]; got {max_risk!r}")
        target = np.linspace(0.0, float(max_risk), g)
    else:
        target = np.asarray(grid, dtype=float)
        if target.ndim != 1 or target.size == 0:
            raise ConfigError("grid must be an int or a non-empty 1-D array of risks")
        if not np.all(np.isfinite(target)) or target.min() < 0 or target.max() > 1:
            raise ConfigError("grid risks must be finite and lie in [0, 1]")
        if nested and np.any(np.diff(target) < 0):
            raise ConfigError(
                "grid risks must be non-decreasing for a nested population",
                hint="sort them (safest first) or pass nested=False",
            )
    counts = np.round(target * n_units).astype(int)
    rng = np.random.default_rng(seed)
    if nested:
        rank = rng.permutation(n_units)
        losses = (rank[:, None] < counts[None, :]).astype(float)
    else:
        rank = rng.random((n_units, counts.size)).argsort(axis=0).argsort(axis=0)
        losses = (rank < counts[None, :]).astype(float)
    return losses, counts / n_units
