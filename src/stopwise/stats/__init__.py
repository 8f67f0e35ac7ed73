"""Statistics with a guarantee: p-values, Learn-then-Test, conformal risk control.

This is the bottom layer of stopwise. It takes arrays of per-unit losses over a
grid of settings (columns ordered from the safest to the most aggressive) and
returns the chosen setting with its :class:`Certificate`. It imports only
numpy, scipy, the standard library and :mod:`stopwise.errors`; it knows nothing
of language models, traces or policies.

Modules
-------
pvalues
    Binomial, Hoeffding, Bentkus and Hoeffding-Bentkus p-values for
    ``H0: risk > epsilon``; Clopper-Pearson intervals; the smallest
    certifiable epsilon for a calibration size.
ltt
    Learn-then-Test with fixed-sequence testing (PAC guarantee).
crc
    Conformal risk control (marginal guarantee).
validate
    Resampling check that a calibrator keeps its promise.

References
----------
.. [1] Angelopoulos, Bates, Candes, Jordan, Lei, "Learn then Test",
   arXiv:2110.01052, 2021.
.. [2] Angelopoulos, Bates, Fisch, Lei, Schuster, "Conformal Risk Control",
   arXiv:2208.02814, 2022.
"""

from stopwise.stats.crc import CRCResult, conformal_risk_control
from stopwise.stats.ltt import (
    Certificate,
    LearnThenTest,
    LTTResult,
    check_losses,
    cheapest_certified,
    fixed_sequence,
    learn_then_test,
)
from stopwise.stats.pvalues import (
    PVALUE_METHODS,
    bentkus_pvalue,
    binomial_pvalue,
    clopper_pearson,
    compute_pvalues,
    hb_pvalue,
    hoeffding_pvalue,
    min_certifiable_epsilon,
)
from stopwise.stats.validate import (
    CONSISTENCY_LEVEL,
    ValidationResult,
    cost_aware_calibrator,
    ltt_calibrator,
    naive_calibrator,
    synthetic_population,
    validate_calibrator,
)

__all__ = [
    "CONSISTENCY_LEVEL",
    "PVALUE_METHODS",
    "CRCResult",
    "Certificate",
    "LTTResult",
    "LearnThenTest",
    "ValidationResult",
    "bentkus_pvalue",
    "binomial_pvalue",
    "check_losses",
    "cost_aware_calibrator",
    "cheapest_certified",
    "clopper_pearson",
    "compute_pvalues",
    "conformal_risk_control",
    "fixed_sequence",
    "hb_pvalue",
    "hoeffding_pvalue",
    "learn_then_test",
    "ltt_calibrator",
    "min_certifiable_epsilon",
    "naive_calibrator",
    "synthetic_population",
    "validate_calibrator",
]
