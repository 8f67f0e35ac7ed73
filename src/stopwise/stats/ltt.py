"""Learn-then-Test: pick the most aggressive setting whose risk is certified.

Input is a loss matrix of shape ``(n, G)``: one row per calibration unit (for
example one question), one column per setting of a grid, ordered from the
SAFEST setting (column 0) to the most aggressive one. Nothing here knows what
a "setting" is.

For each column ``j`` a p-value ``p_j`` for ``H0_j : R_j > epsilon`` is
computed from the column mean. Fixed-sequence testing walks ``j = 0, 1, ...``
and rejects while ``p_j <= delta'``; it stops at the first non-rejection. This
controls the family-wise error rate at ``delta'`` with no multiplicity
correction along the grid, so the selected column has risk at most
``epsilon`` with probability at least ``1 - delta'`` over the calibration draw.
When ``K`` policies (grids) are calibrated and the best one is chosen
afterwards, Bonferroni gives ``delta' = delta / K``.

References
----------
.. [1] A. N. Angelopoulos, S. Bates, E. J. Candes, M. I. Jordan, L. Lei,
   "Learn then Test: Calibrating Predictive Algorithms to Achieve Risk
   Control", arXiv:2110.01052, 2021 (Sec. 4, fixed-sequence testing).
.. [2] MAPIE, ``mapie.risk_control`` (``ltt_procedure``, Hoeffding-Bentkus
   p-values).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from stopwise.errors import ConfigError, NotFittedError, UnknownNameError
from stopwise.stats.pvalues import PVALUE_METHODS, binomial_pvalue, hb_pvalue

__all__ = [
    "Certificate",
    "LTTResult",
    "LearnThenTest",
    "check_losses",
    "cheapest_certified",
    "fixed_sequence",
    "learn_then_test",
]

_GUARANTEES = ("pac", "marginal")
_METHODS = ("binomial", "hb", "crc")


@dataclass(frozen=True)
class Certificate:
    """What a calibration certified, in a form that can be stored and shown.

    Attributes
    ----------
    guarantee : {"pac", "marginal"}
        ``"pac"``: with probability ``>= 1 - delta`` over the calibration draw,
        the selected setting has risk ``<= epsilon`` (Learn-then-Test).
        ``"marginal"``: the expected loss, averaged over calibration draws and
        the test unit, is ``<= epsilon`` (conformal risk control).
    epsilon : float
        Target risk level.
    delta : float or None
        Total error level of a PAC guarantee; ``None`` for marginal ones.
    delta_per_test : float or None
        Level used for each test, ``delta / k_policies``; ``None`` for marginal.
    k_policies : int
        Number of policies the Bonferroni correction accounts for.
    n : int
        Number of calibration units (rows of the loss matrix).
    empirical_risk : float
        Calibration mean loss of the selected setting (of column 0 when none
        was selected).
    p_value : float or None
        p-value of the selected setting (of column 0 when none was selected);
        ``None`` for conformal risk control.
    certified : bool
        Whether some setting was certified.
    index : int or None
        Selected grid column, ``None`` when nothing was certified (fall back to
        the full-compute setting).
    method : {"binomial", "hb", "crc"}
        How the guarantee was obtained.
    """

    guarantee: Literal["pac", "marginal"]
    epsilon: float
    delta: float | None
    delta_per_test: float | None
    k_policies: int
    n: int
    empirical_risk: float
    p_value: float | None
    certified: bool
    index: int | None
    method: Literal["binomial", "hb", "crc"]

    def __post_init__(self) -> None:
        if self.guarantee not in _GUARANTEES:
            raise UnknownNameError("guarantee", str(self.guarantee), _GUARANTEES)
        if self.method not in _METHODS:
            raise UnknownNameError("certificate method", str(self.method), _METHODS)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field.

        Examples
        --------
        >>> import numpy as np
        >>> learn_then_test(np.zeros((60, 2)), 0.1, 0.1).certificate.to_dict()["index"]
        1
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Certificate:
        """Rebuild a certificate from :meth:`to_dict` output.

        Raises
        ------
        ConfigError
            If a field is missing or unknown.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(data)
        extra = set(data) - names
        if missing or extra:
            raise ConfigError(
                "certificate dict does not match the Certificate fields"
                + (f"; missing: {', '.join(sorted(missing))}" if missing else "")
                + (f"; unknown: {', '.join(sorted(extra))}" if extra else ""),
                hint=f"expected exactly: {', '.join(sorted(names))}",
            )
        return cls(**{k: data[k] for k in names})


@dataclass(frozen=True)
class LTTResult:
    """Outcome of :func:`learn_then_test`.

    Attributes
    ----------
    index : int or None
        Most aggressive certified column, ``None`` if column 0 is not certified.
    certificate : Certificate
        The guarantee attached to ``index``.
    p_values : numpy.ndarray, shape (G,)
        p-value of every column.
    risks : numpy.ndarray, shape (G,)
        Calibration mean loss of every column.
    """

    index: int | None
    certificate: Certificate
    p_values: np.ndarray
    risks: np.ndarray


# ------------------------------------------------------------------------- helpers


def check_losses(losses: Any, *, bound: float = 1.0, name: str = "losses") -> np.ndarray:
    """Validate a loss matrix and return it as a float ``(n, G)`` array.

    Parameters
    ----------
    losses : array_like, shape (n, G)
        Rows are calibration units, columns are settings.
    bound : float, default 1.0
        Losses must lie in ``[0, bound]``.
    name : str
        Name used in error messages.

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    ConfigError
        If the array is not 2-D, is empty, holds NaN/inf or leaves ``[0, bound]``.
    """
    try:
        arr = np.asarray(losses, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a numeric array of shape (n_units, n_settings)") from exc
    if arr.ndim != 2:
        raise ConfigError(
            f"{name} must be a 2-D array of shape (n_units, n_settings); got {arr.ndim}-D "
            f"shape {arr.shape}",
            hint="one row per calibration unit, one column per setting (safest first); "
            "use losses[:, None] for a single setting",
        )
    if arr.shape[0] < 1:
        raise ConfigError(f"{name} has no rows: need n >= 1 calibration units")
    if arr.shape[1] < 1:
        raise ConfigError(f"{name} has no columns: need at least one setting")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(
            f"{name} contain NaN or infinite values",
            hint="drop or fix the units with missing losses before calibrating",
        )
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > bound:
        raise ConfigError(
            f"{name} must lie in [0, {bound:g}]; found values in [{lo:g}, {hi:g}]",
            hint="rescale losses to [0, 1] (or pass the right bound)",
        )
    return arr


def check_level(value: Any, name: str) -> float:
    """``value`` as a float strictly inside (0, 1), else a ConfigError naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a number in (0, 1); got {value!r}") from exc
    if not (0.0 < v < 1.0) or math.isnan(v):
        raise ConfigError(f"{name} must lie strictly between 0 and 1; got {value!r}")
    return v


def _check_k(k_policies: Any) -> int:
    if isinstance(k_policies, bool) or not isinstance(k_policies, (int, np.integer)):
        raise ConfigError(f"k_policies must be a positive integer; got {k_policies!r}")
    if k_policies < 1:
        raise ConfigError(
            f"k_policies must be >= 1; got {k_policies}",
            hint="k_policies is the number of policies compared on this calibration set",
        )
    return int(k_policies)


def fixed_sequence(p_values: np.ndarray, level: float) -> int | None:
    """Fixed-sequence test: last index of the initial run of ``p_j <= level``.

    Parameters
    ----------
    p_values : numpy.ndarray, shape (G,)
        p-values ordered from the safest hypothesis to the most aggressive.
    level : float
        Per-test rejection level.

    Returns
    -------
    int or None
        Last rejected index before the first non-rejection; ``None`` when the
        first p-value is not rejected.

    Examples
    --------
    >>> fixed_sequence(np.array([0.01, 0.02, 0.5, 0.01]), 0.05)
    1
    """
    rejected = np.asarray(p_values) <= level
    if rejected.size == 0 or not rejected[0]:
        return None
    if rejected.all():
        return int(rejected.size - 1)
    return int(np.argmin(rejected)) - 1


def cheapest_certified(costs: Any, last: int | None, full_cost: float) -> int | None:
    """The cheapest setting among those fixed-sequence testing certified, or ``None`` for full compute.

    Parameters
    ----------
    costs : array_like, shape (G,)
        Expected cost of each setting on the calibration data (for example
        generated plus probe tokens per question).
    last : int or None
        The last certified index (:func:`fixed_sequence`): settings ``0..last``
        are certified, ``None`` when none is.
    full_cost : float
        The cost of full compute on the same data: the no-op setting, whose risk
        is 0, is always a candidate.

    Returns
    -------
    int or None
        The index of the cheapest certified setting (the safer one on ties), or
        ``None`` when no certified setting costs less than full compute.

    Notes
    -----
    Choosing by cost keeps the guarantee. Fixed-sequence testing controls the
    family-wise error rate: with probability ``>= 1 - delta'`` *every*
    certified setting has risk ``<= epsilon`` at once, so any choice among them,
    however it uses the calibration data, is covered by the same event. (The
    most aggressive certified setting is one such choice, not the only one.)
    Full compute has risk 0 and needs no test.

    Examples
    --------
    >>> cheapest_certified([100.0, 80.0, 90.0, 70.0], 2, 100.0)
    1
    >>> cheapest_certified([100.0, 120.0], 1, 100.0) is None
    True
    """
    if last is None:
        return None
    c = np.asarray(costs, dtype=float)[: last + 1]
    j = int(np.argmin(c))
    return j if c[j] < float(full_cost) else None


# --------------------------------------------------------------------- main entry


def learn_then_test(
    losses: Any,
    epsilon: float,
    delta: float,
    *,
    method: Literal["binomial", "hb"] = "hb",
    k_policies: int = 1,
) -> LTTResult:
    """Certify the most aggressive setting with risk ``<= epsilon`` w.p. ``>= 1 - delta``.

    Parameters
    ----------
    losses : array_like, shape (n, G)
        Loss of each calibration unit (row) under each setting (column), in
        [0, 1]; column 0 is the safest setting, the last the most aggressive.
    epsilon : float
        Target risk, in (0, 1).
    delta : float
        Total error level, in (0, 1).
    method : {"hb", "binomial"}, default "hb"
        p-value: Hoeffding-Bentkus (any losses in [0, 1]) or exact binomial
        (losses in {0, 1} only).
    k_policies : int, default 1
        Number of policies calibrated on the same data; each test runs at
        ``delta / k_policies`` (Bonferroni).

    Returns
    -------
    LTTResult
        Selected index (or ``None``), certificate, p-values and risks per column.

    Raises
    ------
    ConfigError
        On a malformed loss matrix, levels outside (0, 1), a bad
        ``k_policies``, an unknown method, or non-binary losses with
        ``method="binomial"``.

    Notes
    -----
    The guarantee: with probability at least ``1 - delta`` over i.i.d.
    calibration units, every column up to the selected one has risk at most
    ``epsilon`` [1]_. Fixed-sequence testing stops at the first column that is
    not rejected, even if a later column would be, because the family-wise
    error control depends on that order being fixed in advance.

    References
    ----------
    .. [1] Angelopoulos et al., "Learn then Test", arXiv:2110.01052, 2021.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> risk = np.linspace(0.0, 0.3, 7)
    >>> losses = (rng.random((500, 1)) < risk).astype(float)
    >>> res = learn_then_test(losses, epsilon=0.1, delta=0.1)
    >>> res.index, res.certificate.certified
    (1, True)
    """
    arr = check_losses(losses)
    epsilon = check_level(epsilon, "epsilon")
    delta = check_level(delta, "delta")
    k_policies = _check_k(k_policies)
    if method not in PVALUE_METHODS:
        raise UnknownNameError("p-value method", str(method), PVALUE_METHODS)
    if method == "binomial" and not np.all((arr == 0) | (arr == 1)):
        raise ConfigError(
            "method='binomial' needs losses in {0, 1}, but some losses are fractional",
            hint="use method='hb' for losses in [0, 1]",
        )
    n = arr.shape[0]
    risks = arr.mean(axis=0)
    if method == "binomial":
        p_values = binomial_pvalue(risks, n, epsilon)
    else:
        p_values = hb_pvalue(risks, n, epsilon)
    p_values = np.asarray(p_values, dtype=float)
    level = delta / k_policies
    index = fixed_sequence(p_values, level)
    at = 0 if index is None else index
    cert = Certificate(
        guarantee="pac",
        epsilon=epsilon,
        delta=delta,
        delta_per_test=level,
        k_policies=k_policies,
        n=int(n),
        empirical_risk=float(risks[at]),
        p_value=float(p_values[at]),
        certified=index is not None,
        index=index,
        method=method,
    )
    return LTTResult(index=index, certificate=cert, p_values=p_values, risks=risks)


class LearnThenTest:
    """Sklearn-shaped Learn-then-Test controller.

    Parameters
    ----------
    epsilon : float
        Target risk, in (0, 1).
    delta : float
        Total error level, in (0, 1).
    method : {"hb", "binomial"}, default "hb"
        p-value used for each test.
    k_policies : int, default 1
        Bonferroni factor for the number of policies compared.

    Attributes
    ----------
    index_ : int or None
        Selected column.
    certificate_ : Certificate
    p_values_ : numpy.ndarray, shape (G,)
    risks_ : numpy.ndarray, shape (G,)

    See Also
    --------
    learn_then_test : the functional form.

    Examples
    --------
    >>> import numpy as np
    >>> ltt = LearnThenTest(epsilon=0.1, delta=0.1).calibrate(np.zeros((60, 3)))
    >>> ltt.index_
    2
    """

    def __init__(
        self,
        epsilon: float,
        delta: float,
        method: Literal["binomial", "hb"] = "hb",
        k_policies: int = 1,
    ) -> None:
        self.epsilon = epsilon
        self.delta = delta
        self.method = method
        self.k_policies = k_policies
        self._result: LTTResult | None = None

    def calibrate(self, losses: Any) -> LearnThenTest:
        """Run :func:`learn_then_test` on ``losses`` and store the fitted attributes.

        Parameters
        ----------
        losses : array_like, shape (n, G)
            Calibration losses, columns ordered safest first.

        Returns
        -------
        LearnThenTest
            ``self``.
        """
        self._result = learn_then_test(
            losses,
            self.epsilon,
            self.delta,
            method=self.method,
            k_policies=self.k_policies,
        )
        return self

    def _fitted(self) -> LTTResult:
        if self._result is None:
            raise NotFittedError(
                "this LearnThenTest is not calibrated yet",
                hint="call .calibrate(losses) first",
            )
        return self._result

    @property
    def index_(self) -> int | None:
        return self._fitted().index

    @property
    def certificate_(self) -> Certificate:
        return self._fitted().certificate

    @property
    def p_values_(self) -> np.ndarray:
        return self._fitted().p_values

    @property
    def risks_(self) -> np.ndarray:
        return self._fitted().risks

    def __repr__(self) -> str:
        return (
            f"LearnThenTest(epsilon={self.epsilon!r}, delta={self.delta!r}, "
            f"method={self.method!r}, k_policies={self.k_policies!r})"
        )
