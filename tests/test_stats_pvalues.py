"""Unit and property tests for stopwise.stats.pvalues."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from stopwise.errors import ConfigError, UnknownNameError
from stopwise.stats.pvalues import (
    bentkus_pvalue,
    binomial_pvalue,
    clopper_pearson,
    compute_pvalues,
    hb_pvalue,
    hoeffding_pvalue,
    min_certifiable_epsilon,
)

PVALUE_FUNCS = [binomial_pvalue, hoeffding_pvalue, bentkus_pvalue, hb_pvalue]


def _kl(a: float, b: float) -> float:
    out = 0.0
    if a > 0:
        out += a * math.log(a / b)
    if a < 1:
        out += (1 - a) * math.log((1 - a) / (1 - b))
    return out


# ---------------------------------------------------------------- known values


def test_binomial_matches_scipy() -> None:
    n, eps = 40, 0.15
    k = np.arange(n + 1)
    got = binomial_pvalue(k / n, n, eps)
    np.testing.assert_allclose(got, stats.binom.cdf(k, n, eps), rtol=1e-12)


def test_hoeffding_matches_formula() -> None:
    n, eps = 120, 0.2
    for r in [0.0, 0.01, 0.1, 0.19, 0.2, 0.5, 1.0]:
        expected = math.exp(-n * _kl(min(r, eps), eps))
        assert hoeffding_pvalue(r, n, eps) == pytest.approx(expected, rel=1e-12)


def test_bentkus_matches_formula_and_is_clipped() -> None:
    n, eps = 80, 0.1
    r = np.array([0.0, 0.05, 0.0625, 0.5])
    expected = np.minimum(1.0, math.e * stats.binom.cdf(np.ceil(n * r), n, eps))
    np.testing.assert_allclose(bentkus_pvalue(r, n, eps), expected, rtol=1e-12)
    assert bentkus_pvalue(0.5, n, eps) == 1.0


def test_bentkus_ceil_is_robust_to_float_sums() -> None:
    # The mean of 7 ones and 18 zeros times 25 is 7.000000000000001 in floating
    # point; the count is still 7.
    r_hat = np.mean(np.r_[np.ones(7), np.zeros(18)])
    assert 25 * r_hat > 7
    expected = math.e * stats.binom.cdf(7, 25, 0.5)
    assert bentkus_pvalue(r_hat, 25, 0.5) == pytest.approx(expected, rel=1e-12)


def test_hb_is_min_of_hoeffding_and_bentkus() -> None:
    n, eps = 200, 0.1
    r = np.linspace(0, 0.2, 41)
    expected = np.minimum(hoeffding_pvalue(r, n, eps), bentkus_pvalue(r, n, eps))
    np.testing.assert_array_equal(hb_pvalue(r, n, eps), expected)


def test_scalar_in_float_out_and_shape_kept() -> None:
    for f in PVALUE_FUNCS:
        assert isinstance(f(0.1, 50, 0.2), float)
        out = f(np.full((3, 4), 0.1), 50, 0.2)
        assert isinstance(out, np.ndarray) and out.shape == (3, 4)


def test_pvalue_is_one_when_risk_at_or_above_epsilon() -> None:
    for f in (hoeffding_pvalue, hb_pvalue):
        assert f(0.3, 100, 0.3) == 1.0
        assert f(0.9, 100, 0.3) == 1.0


def test_compute_pvalues_dispatch() -> None:
    r = np.array([0.0, 0.1])
    np.testing.assert_array_equal(compute_pvalues(r, 30, 0.2, "hb"), hb_pvalue(r, 30, 0.2))
    np.testing.assert_array_equal(
        compute_pvalues(r, 30, 0.2, "binomial"), binomial_pvalue(r, 30, 0.2)
    )
    with pytest.raises(UnknownNameError, match="unknown p-value method 'hoeffding'"):
        compute_pvalues(r, 30, 0.2, "hoeffding")


# ------------------------------------------------------- min certifiable epsilon


def test_min_certifiable_epsilon_binomial_n45() -> None:
    eps = min_certifiable_epsilon(45, 0.1)
    assert eps == pytest.approx(0.05, abs=5e-4)
    assert eps == pytest.approx(1 - 0.1 ** (1 / 45), rel=1e-12)
    assert binomial_pvalue(0.0, 45, eps) == pytest.approx(0.1, rel=1e-9)
    assert binomial_pvalue(0.0, 45, eps * 0.99) > 0.1


@pytest.mark.parametrize("n,delta", [(1, 0.5), (45, 0.1), (300, 0.01), (2000, 0.05 / 7)])
def test_min_certifiable_epsilon_hb_solves_the_equation(n: int, delta: float) -> None:
    eps = min_certifiable_epsilon(n, delta, method="hb")
    assert hb_pvalue(0.0, n, eps) == pytest.approx(delta, rel=1e-8)
    assert hb_pvalue(0.0, n, eps * 0.99) > delta
    assert hb_pvalue(0.0, n, min(eps * 1.01, 0.999)) < delta


def test_min_certifiable_epsilon_errors() -> None:
    with pytest.raises(UnknownNameError, match="unknown p-value method"):
        min_certifiable_epsilon(45, 0.1, method="crc")
    with pytest.raises(ConfigError, match="delta must lie strictly between 0 and 1"):
        min_certifiable_epsilon(45, 1.0)
    with pytest.raises(ConfigError, match="n must be >= 1"):
        min_certifiable_epsilon(0, 0.1)


# ------------------------------------------------------------- Clopper-Pearson


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (57, 1000), (1, 2)])
def test_clopper_pearson_matches_scipy(k: int, n: int) -> None:
    lo, hi = clopper_pearson(k, n, 0.05)
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert lo == pytest.approx(ci.low, abs=1e-10)
    assert hi == pytest.approx(ci.high, abs=1e-10)


def test_clopper_pearson_vectorized_and_errors() -> None:
    lo, hi = clopper_pearson(np.array([0, 5, 10]), 10, 0.1)
    assert lo[0] == 0.0 and hi[2] == 1.0 and np.all(lo <= hi)
    with pytest.raises(ConfigError, match="0 <= k <= n"):
        clopper_pearson(11, 10)
    with pytest.raises(ConfigError, match="integer count"):
        clopper_pearson(2.5, 10)


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("f", PVALUE_FUNCS)
def test_bad_inputs_raise_config_error(f) -> None:
    with pytest.raises(ConfigError, match="epsilon must lie strictly between 0 and 1"):
        f(0.1, 10, 0.0)
    with pytest.raises(ConfigError, match="epsilon must lie strictly between 0 and 1"):
        f(0.1, 10, 1.0)
    with pytest.raises(ConfigError, match="epsilon must be a number"):
        f(0.1, 10, "x")
    with pytest.raises(ConfigError, match="n must be >= 1"):
        f(0.1, 0, 0.1)
    with pytest.raises(ConfigError, match="n must be a positive integer"):
        f(0.1, 10.5, 0.1)
    with pytest.raises(ConfigError, match=r"r_hat must lie in \[0, 1\]"):
        f(np.array([0.1, 1.5]), 10, 0.1)
    with pytest.raises(ConfigError, match=r"r_hat must lie in \[0, 1\]"):
        f(-0.2, 10, 0.1)
    with pytest.raises(ConfigError, match="NaN or infinite"):
        f(np.nan, 10, 0.1)


# --------------------------------------------------------------- properties

_n = st.integers(min_value=1, max_value=2000)
_eps = st.floats(min_value=1e-3, max_value=0.999)
_r = st.floats(min_value=0.0, max_value=1.0)


@settings(max_examples=60, deadline=None)
@given(n=_n, eps=_eps, r1=_r, r2=_r)
def test_pvalues_monotone_in_r_hat(n: int, eps: float, r1: float, r2: float) -> None:
    lo, hi = sorted((r1, r2))
    for f in PVALUE_FUNCS:
        p_lo, p_hi = f(lo, n, eps), f(hi, n, eps)
        assert 0.0 <= p_lo <= 1.0 and 0.0 <= p_hi <= 1.0
        assert p_lo <= p_hi + 1e-12


@settings(max_examples=60, deadline=None)
@given(n=_n, r=_r, e1=_eps, e2=_eps)
def test_pvalues_decrease_in_epsilon(n: int, r: float, e1: float, e2: float) -> None:
    lo, hi = sorted((e1, e2))
    for f in PVALUE_FUNCS:
        assert f(r, n, hi) <= f(r, n, lo) + 1e-12


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=400),
    eps=st.floats(min_value=0.01, max_value=0.99),
    a=st.floats(min_value=1e-4, max_value=0.5),
)
def test_pvalues_super_uniform_at_the_null_boundary(n: int, eps: float, a: float) -> None:
    # Exact: with K ~ Binom(n, eps) (risk exactly epsilon), P(p(K/n) <= a) <= a.
    k = np.arange(n + 1)
    pmf = stats.binom.pmf(k, n, eps)
    for f in PVALUE_FUNCS:
        p = f(k / n, n, eps)
        assert pmf[p <= a].sum() <= a + 1e-9
