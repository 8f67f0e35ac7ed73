"""Valid p-values for "the risk exceeds epsilon", and related binomial tools.

Every function here tests the null hypothesis

    H0 : R > epsilon,

where R is the expected loss of a setting, from the empirical mean ``r_hat`` of
``n`` i.i.d. losses in [0, 1]. A small p-value is evidence that the risk is at
most ``epsilon``. These are the building blocks of Learn-then-Test
(:mod:`stopwise.stats.ltt`).

The functions are vectorized over ``r_hat`` (any array shape); ``n`` and
``epsilon`` are scalars. A scalar ``r_hat`` gives a Python ``float``.

References
----------
.. [1] A. N. Angelopoulos, S. Bates, E. J. Candes, M. I. Jordan, L. Lei,
   "Learn then Test: Calibrating Predictive Algorithms to Achieve Risk
   Control", arXiv:2110.01052, 2021.
.. [2] S. Bates, A. N. Angelopoulos, L. Lei, J. Malik, M. I. Jordan,
   "Distribution-Free, Risk-Controlling Prediction Sets", JACM 68(6), 2021.
.. [3] W. Hoeffding, "Probability inequalities for sums of bounded random
   variables", JASA 58(301), 1963.
.. [4] V. Bentkus, "On Hoeffding's inequalities", Annals of Probability
   32(2), 2004.
.. [5] C. J. Clopper, E. S. Pearson, "The use of confidence or fiducial
   limits illustrated in the case of the binomial", Biometrika 26(4), 1934.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy import optimize, stats

from stopwise.errors import ConfigError, UnknownNameError

__all__ = [
    "PVALUE_METHODS",
    "bentkus_pvalue",
    "binomial_pvalue",
    "clopper_pearson",
    "compute_pvalues",
    "hb_pvalue",
    "hoeffding_pvalue",
    "min_certifiable_epsilon",
]

PVALUE_METHODS = ("binomial", "hb")
"""Names accepted by :func:`compute_pvalues` and :func:`min_certifiable_epsilon`."""

# n * r_hat is a sum of losses computed in floating point; an exact count k can
# come out as k + 1e-14, which ceil() would turn into k + 1.
_COUNT_TOL = 1e-9


# --------------------------------------------------------------------------- checks


def _check_n(n: object, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        if isinstance(n, (float, np.floating)) and float(n).is_integer():
            n = int(n)
        else:
            raise ConfigError(
                f"{name} must be a positive integer; got {n!r}",
                hint=f"pass {name} as the number of calibration units",
            )
    n = int(n)
    if n < 1:
        raise ConfigError(f"{name} must be >= 1; got {n}", hint="calibrate on at least one unit")
    return n


def _check_open_unit(value: object, name: str) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a number in (0, 1); got {value!r}") from exc
    if not (0.0 < v < 1.0):
        raise ConfigError(
            f"{name} must lie strictly between 0 and 1; got {v!r}",
            hint=f"e.g. {name}=0.1",
        )
    return v


def _check_r_hat(r_hat: object) -> np.ndarray:
    r = np.asarray(r_hat, dtype=float)
    if not np.all(np.isfinite(r)):
        raise ConfigError("r_hat contains NaN or infinite values")
    if r.size and (r.min() < -1e-12 or r.max() > 1 + 1e-12):
        raise ConfigError(
            f"r_hat must lie in [0, 1]; found values in [{r.min():g}, {r.max():g}]",
            hint="r_hat is the mean of losses bounded in [0, 1]",
        )
    return np.clip(r, 0.0, 1.0)


def _out(p: np.ndarray, scalar: bool) -> np.ndarray | float:
    p = np.clip(p, 0.0, 1.0)
    return float(p) if scalar else p


# ------------------------------------------------------------------------- p-values


def binomial_pvalue(r_hat: np.ndarray | float, n: int, epsilon: float) -> np.ndarray | float:
    """Exact binomial p-value for H0: risk > epsilon, for 0/1 losses.

    With ``k = round(n * r_hat)`` observed losses out of ``n``, the p-value is
    ``P(Binom(n, epsilon) <= k)``. It is exactly valid (super-uniform under H0)
    when the losses are Bernoulli; it is *not* valid for losses in (0, 1) —
    use :func:`hb_pvalue` then.

    Parameters
    ----------
    r_hat : float or array_like
        Empirical mean of ``n`` losses in {0, 1}.
    n : int
        Number of i.i.d. losses (calibration units).
    epsilon : float
        Risk level of the null hypothesis, in (0, 1).

    Returns
    -------
    float or numpy.ndarray
        p-values in [0, 1], same shape as ``r_hat``.

    References
    ----------
    Angelopoulos et al., "Learn then Test", arXiv:2110.01052, Sec. 3.1.

    Examples
    --------
    >>> round(binomial_pvalue(0.0, 45, 0.05), 4)
    0.0994
    """
    n = _check_n(n)
    epsilon = _check_open_unit(epsilon, "epsilon")
    r = _check_r_hat(r_hat)
    k = np.round(n * r)
    return _out(stats.binom.cdf(k, n, epsilon), np.ndim(r_hat) == 0)


def _h1(a: np.ndarray, b: float) -> np.ndarray:
    """KL divergence between Bernoulli(a) and Bernoulli(b), with 0 log 0 = 0."""
    a = np.asarray(a, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where(a > 0, a * np.log(a / b), 0.0)
        second = np.where(a < 1, (1 - a) * np.log((1 - a) / (1 - b)), 0.0)
    return first + second


def hoeffding_pvalue(r_hat: np.ndarray | float, n: int, epsilon: float) -> np.ndarray | float:
    """Hoeffding p-value for H0: risk > epsilon, for losses in [0, 1].

    ``p = exp(-n * h1(min(r_hat, epsilon), epsilon))`` with
    ``h1(a, b) = a log(a/b) + (1-a) log((1-a)/(1-b))``, the tight (KL) form of
    Hoeffding's inequality.

    Parameters
    ----------
    r_hat : float or array_like
        Empirical mean of ``n`` losses in [0, 1].
    n : int
        Number of i.i.d. losses.
    epsilon : float
        Risk level of the null hypothesis, in (0, 1).

    Returns
    -------
    float or numpy.ndarray
        p-values in [0, 1], same shape as ``r_hat``.

    References
    ----------
    Hoeffding (1963), Thm. 1; Bates et al. (2021), "RCPS", Sec. 3.1.1.

    Examples
    --------
    >>> hoeffding_pvalue(0.2, 100, 0.1)
    1.0
    """
    n = _check_n(n)
    epsilon = _check_open_unit(epsilon, "epsilon")
    r = _check_r_hat(r_hat)
    p = np.exp(-n * _h1(np.minimum(r, epsilon), epsilon))
    return _out(p, np.ndim(r_hat) == 0)


def bentkus_pvalue(r_hat: np.ndarray | float, n: int, epsilon: float) -> np.ndarray | float:
    """Bentkus p-value for H0: risk > epsilon, for losses in [0, 1].

    ``p = e * P(Binom(n, epsilon) <= ceil(n * r_hat))``.

    Parameters
    ----------
    r_hat : float or array_like
        Empirical mean of ``n`` losses in [0, 1].
    n : int
        Number of i.i.d. losses.
    epsilon : float
        Risk level of the null hypothesis, in (0, 1).

    Returns
    -------
    float or numpy.ndarray
        p-values in [0, 1] (clipped), same shape as ``r_hat``.

    References
    ----------
    Bentkus (2004); Bates et al. (2021), "RCPS", Sec. 3.1.2.

    Examples
    --------
    >>> round(bentkus_pvalue(0.0, 100, 0.05), 4)
    0.0161
    """
    n = _check_n(n)
    epsilon = _check_open_unit(epsilon, "epsilon")
    r = _check_r_hat(r_hat)
    k = np.ceil(n * r - _COUNT_TOL)
    p = math.e * stats.binom.cdf(k, n, epsilon)
    return _out(p, np.ndim(r_hat) == 0)


def hb_pvalue(r_hat: np.ndarray | float, n: int, epsilon: float) -> np.ndarray | float:
    """Hoeffding-Bentkus p-value: the minimum of :func:`hoeffding_pvalue` and :func:`bentkus_pvalue`.

    Valid for any i.i.d. losses bounded in [0, 1]; this is the default p-value
    of Learn-then-Test and of MAPIE's ``risk_control``.

    Parameters
    ----------
    r_hat : float or array_like
        Empirical mean of ``n`` losses in [0, 1].
    n : int
        Number of i.i.d. losses.
    epsilon : float
        Risk level of the null hypothesis, in (0, 1).

    Returns
    -------
    float or numpy.ndarray
        p-values in [0, 1], same shape as ``r_hat``.

    References
    ----------
    Bates et al. (2021), "RCPS", Prop. 5; Angelopoulos et al. (2021),
    "Learn then Test", Sec. 3.1.

    Examples
    --------
    >>> import numpy as np
    >>> hb_pvalue(np.array([0.0, 0.5]), 100, 0.1).round(4).tolist()
    [0.0, 1.0]
    """
    h = hoeffding_pvalue(r_hat, n, epsilon)
    b = bentkus_pvalue(r_hat, n, epsilon)
    p = np.minimum(h, b)
    return float(p) if np.ndim(r_hat) == 0 else p


def compute_pvalues(
    r_hat: np.ndarray | float,
    n: int,
    epsilon: float,
    method: Literal["binomial", "hb"] = "hb",
) -> np.ndarray | float:
    """Dispatch to :func:`binomial_pvalue` or :func:`hb_pvalue` by name.

    Parameters
    ----------
    r_hat : float or array_like
        Empirical mean risks.
    n : int
        Number of i.i.d. losses behind each mean.
    epsilon : float
        Risk level of the null hypothesis, in (0, 1).
    method : {"binomial", "hb"}
        ``"binomial"`` for 0/1 losses, ``"hb"`` for any losses in [0, 1].

    Returns
    -------
    float or numpy.ndarray

    Examples
    --------
    >>> compute_pvalues(0.0, 45, 0.05, "binomial") == binomial_pvalue(0.0, 45, 0.05)
    True
    """
    if method == "binomial":
        return binomial_pvalue(r_hat, n, epsilon)
    if method == "hb":
        return hb_pvalue(r_hat, n, epsilon)
    raise UnknownNameError("p-value method", str(method), PVALUE_METHODS)


# ---------------------------------------------------------------- derived quantities


def min_certifiable_epsilon(
    n: int, delta: float, method: Literal["binomial", "hb"] = "binomial"
) -> float:
    """Smallest epsilon that ``n`` calibration units can certify at level ``delta``.

    This is the epsilon at which zero observed losses out of ``n`` give a
    p-value of exactly ``delta``; any smaller epsilon can never be certified,
    whatever the data. Useful to tell a user that their calibration set is too
    small for the risk level they asked for.

    Parameters
    ----------
    n : int
        Number of calibration units.
    delta : float
        Error level of the test, in (0, 1). With several tests (Bonferroni over
        K policies) pass ``delta / K``.
    method : {"binomial", "hb"}
        ``"binomial"`` gives the closed form ``1 - delta ** (1 / n)``;
        ``"hb"`` solves ``hb_pvalue(0, n, eps) = delta`` with Brent's method.

    Returns
    -------
    float
        The minimal certifiable epsilon, in (0, 1).

    Notes
    -----
    At ``r_hat = 0`` the Hoeffding bound equals ``(1 - eps) ** n``, the
    binomial tail, so both methods agree there; the numerical solution is kept
    so the function stays correct if the HB p-value is ever refined.

    Examples
    --------
    >>> round(min_certifiable_epsilon(45, 0.1), 4)
    0.0499
    """
    n = _check_n(n)
    delta = _check_open_unit(delta, "delta")
    if method == "binomial":
        return float(-math.expm1(math.log(delta) / n))
    if method == "hb":

        def gap(eps: float) -> float:
            return float(hb_pvalue(0.0, n, eps)) - delta

        lo, hi = 1e-15, 1.0 - 1e-15
        if gap(lo) <= 0:  # pragma: no cover - needs delta ~ 1
            return lo
        return float(optimize.brentq(gap, lo, hi, xtol=1e-14, rtol=1e-12))
    raise UnknownNameError("p-value method", str(method), PVALUE_METHODS)


def clopper_pearson(
    k: int | np.ndarray, n: int, alpha: float = 0.05
) -> tuple[float, float] | tuple[np.ndarray, np.ndarray]:
    """Two-sided Clopper-Pearson (exact) confidence interval for a binomial proportion.

    Parameters
    ----------
    k : int or array_like of int
        Number of successes, ``0 <= k <= n``.
    n : int
        Number of trials.
    alpha : float, default 0.05
        One minus the confidence level; each tail gets ``alpha / 2``.

    Returns
    -------
    (low, high) : tuple of float, or tuple of numpy.ndarray
        The interval; ``low = 0`` when ``k = 0`` and ``high = 1`` when ``k = n``.

    References
    ----------
    Clopper & Pearson (1934).

    Examples
    --------
    >>> lo, hi = clopper_pearson(0, 10)
    >>> lo, round(hi, 4)
    (0.0, 0.3085)
    """
    n = _check_n(n)
    alpha = _check_open_unit(alpha, "alpha")
    k_arr = np.asarray(k)
    if not np.all(np.isfinite(k_arr)) or np.any(k_arr != np.round(k_arr)):
        raise ConfigError(f"k must be an integer count; got {k!r}")
    k_arr = k_arr.astype(float)
    if np.any(k_arr < 0) or np.any(k_arr > n):
        raise ConfigError(f"k must satisfy 0 <= k <= n = {n}; got {k!r}")
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(
            k_arr > 0, stats.beta.ppf(alpha / 2, np.maximum(k_arr, 1), n - k_arr + 1), 0.0
        )
        high = np.where(
            k_arr < n, stats.beta.ppf(1 - alpha / 2, k_arr + 1, np.maximum(n - k_arr, 1)), 1.0
        )
    if k_arr.ndim == 0:
        return float(low), float(high)
    return low, high
