"""Conformal risk control: bound the expected loss of the selected setting.

Input is the same ``(n, G)`` loss matrix as :mod:`stopwise.stats.ltt`: rows
are calibration units, columns are settings ordered from the safest (column 0)
to the most aggressive. The guarantee is marginal: averaged over the
calibration draw and a fresh exchangeable test unit, the loss of the chosen
setting is at most ``epsilon``. It is weaker than the PAC guarantee of
Learn-then-Test but needs fewer units.

References
----------
.. [1] A. N. Angelopoulos, S. Bates, A. Fisch, L. Lei, T. Schuster,
   "Conformal Risk Control", ICLR 2024, arXiv:2208.02814.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from stopwise.errors import ConfigError
from stopwise.stats.ltt import Certificate, check_losses

__all__ = ["CRCResult", "conformal_risk_control"]


@dataclass(frozen=True)
class CRCResult:
    """Outcome of :func:`conformal_risk_control`.

    Attributes
    ----------
    index : int or None
        Most aggressive column whose adjusted risk (and that of every safer
        column) is ``<= epsilon``; ``None`` if column 0 already fails.
    certificate : Certificate
        Marginal guarantee (``guarantee="marginal"``, ``delta=None``).
    risks : numpy.ndarray, shape (G,)
        Calibration mean of the monotonized losses.
    adjusted_risks : numpy.ndarray, shape (G,)
        ``n / (n + 1) * risks + bound / (n + 1)``, the quantity compared with
        ``epsilon``.
    """

    index: int | None
    certificate: Certificate
    risks: np.ndarray
    adjusted_risks: np.ndarray


def conformal_risk_control(losses: Any, epsilon: float, *, bound: float = 1.0) -> CRCResult:
    """Pick the most aggressive setting whose conformal risk bound is ``<= epsilon``.

    Parameters
    ----------
    losses : array_like, shape (n, G)
        Losses in ``[0, bound]``, columns ordered safest first.
    epsilon : float
        Target expected loss, ``0 < epsilon < bound``.
    bound : float, default 1.0
        Upper bound ``B`` on any loss.

    Returns
    -------
    CRCResult

    Raises
    ------
    ConfigError
        On a malformed loss matrix or ``epsilon``/``bound`` out of range.

    Notes
    -----
    Conformal risk control needs losses that are non-decreasing in the
    setting. Each row is first made monotone with the running maximum over
    safer settings (``np.maximum.accumulate`` along the grid); this can only
    raise losses, so the guarantee carries over to the original losses. Then
    the selected column is the largest ``j`` such that for every ``j' <= j``

        n / (n + 1) * mean_j' + B / (n + 1) <= epsilon,

    which gives ``E[L_{n+1}(j)] <= epsilon`` for exchangeable units [1]_.

    References
    ----------
    .. [1] Angelopoulos et al., "Conformal Risk Control", arXiv:2208.02814,
       Thm. 1.

    Examples
    --------
    >>> import numpy as np
    >>> losses = np.array([[0, 0, 1], [0, 0, 0], [0, 1, 1]] * 10, dtype=float)
    >>> conformal_risk_control(losses, epsilon=0.4).index
    1
    """
    try:
        b = float(bound)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bound must be a positive number; got {bound!r}") from exc
    if not (b > 0) or not math.isfinite(b):
        raise ConfigError(f"bound must be a positive finite number; got {bound!r}")
    arr = check_losses(losses, bound=b)
    try:
        eps = float(epsilon)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"epsilon must be a number in (0, {b:g}); got {epsilon!r}") from exc
    if not (0.0 < eps < b):
        raise ConfigError(
            f"epsilon must lie strictly between 0 and bound={b:g}; got {epsilon!r}",
        )
    n = arr.shape[0]
    mono = np.maximum.accumulate(arr, axis=1)
    risks = mono.mean(axis=0)
    adjusted = n / (n + 1) * risks + b / (n + 1)
    ok = adjusted <= eps
    if not ok[0]:
        index = None
    elif ok.all():
        index = int(ok.size - 1)
    else:
        index = int(np.argmin(ok)) - 1
    at = 0 if index is None else index
    cert = Certificate(
        guarantee="marginal",
        epsilon=eps,
        delta=None,
        delta_per_test=None,
        k_policies=1,
        n=int(n),
        empirical_risk=float(risks[at]),
        p_value=None,
        certified=index is not None,
        index=index,
        method="crc",
    )
    return CRCResult(index=index, certificate=cert, risks=risks, adjusted_risks=adjusted)
