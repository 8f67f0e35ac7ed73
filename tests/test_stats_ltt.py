"""Tests for stopwise.stats.ltt (Learn-then-Test) and stopwise.stats.crc."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stopwise.errors import ConfigError, NotFittedError, UnknownNameError
from stopwise.stats import (
    Certificate,
    LearnThenTest,
    binomial_pvalue,
    conformal_risk_control,
    fixed_sequence,
    hb_pvalue,
    learn_then_test,
)


def _columns(*counts: int, n: int = 100) -> np.ndarray:
    """0/1 losses with counts[j] losing units in column j (units 0..counts[j]-1)."""
    return (np.arange(n)[:, None] < np.asarray(counts)[None, :]).astype(float)


def _reference_fixed_sequence(p: np.ndarray, level: float) -> int | None:
    index = None
    for j, pj in enumerate(p):
        if pj > level:
            break
        index = j
    return index


# ------------------------------------------------------------- learn_then_test


def test_pvalues_and_risks_per_column() -> None:
    losses = _columns(0, 2, 5, 30)
    res = learn_then_test(losses, 0.1, 0.1, method="hb")
    np.testing.assert_allclose(res.risks, [0.0, 0.02, 0.05, 0.3])
    np.testing.assert_array_equal(res.p_values, hb_pvalue(res.risks, 100, 0.1))
    res_b = learn_then_test(losses, 0.1, 0.1, method="binomial")
    np.testing.assert_array_equal(res_b.p_values, binomial_pvalue(res_b.risks, 100, 0.1))
    assert res.p_values.shape == res.risks.shape == (4,)


def test_stops_at_first_non_rejection_even_if_later_column_passes() -> None:
    losses = _columns(0, 60, 0, n=80)  # column 2 alone would be certified
    res = learn_then_test(losses, 0.1, 0.1)
    assert res.p_values[2] <= 0.1 < res.p_values[1]
    assert res.index == 0
    assert res.certificate.index == 0 and res.certificate.certified


def test_index_none_when_column_zero_fails() -> None:
    losses = _columns(50, 0, 0)
    res = learn_then_test(losses, 0.1, 0.1)
    assert res.index is None
    cert = res.certificate
    assert not cert.certified and cert.index is None
    assert cert.empirical_risk == 0.5 and cert.p_value == res.p_values[0]


def test_all_columns_certified() -> None:
    res = learn_then_test(np.zeros((60, 5)), 0.1, 0.1, method="binomial")
    assert res.index == 4


def test_k_policies_divides_delta() -> None:
    losses = _columns(0, 4, n=100)
    p1 = learn_then_test(losses, 0.1, 0.1).p_values[1]
    # choose delta so that p1 sits between delta/2 and delta
    delta = min(0.99, 1.5 * p1)
    assert delta / 2 < p1 <= delta
    one = learn_then_test(losses, 0.1, delta, k_policies=1)
    two = learn_then_test(losses, 0.1, delta, k_policies=2)
    assert one.index == 1 and two.index == 0
    assert two.certificate.delta == delta
    assert two.certificate.delta_per_test == pytest.approx(delta / 2)
    assert two.certificate.k_policies == 2


def test_n_counts_rows() -> None:
    losses = np.zeros((37, 5))
    cert = learn_then_test(losses, 0.2, 0.1).certificate
    assert cert.n == 37
    assert cert.guarantee == "pac" and cert.method == "hb"
    assert cert.epsilon == 0.2 and cert.delta == 0.1


def test_fractional_losses_with_hb() -> None:
    rng = np.random.default_rng(1)
    losses = rng.uniform(0, 0.05, size=(200, 3)) * np.array([1, 2, 10])
    res = learn_then_test(losses, 0.2, 0.1, method="hb")
    assert res.index == 1


def test_fixed_sequence_helper() -> None:
    assert fixed_sequence(np.array([0.2, 0.01]), 0.05) is None
    assert fixed_sequence(np.array([0.01, 0.05, 0.06, 0.0]), 0.05) == 1
    assert fixed_sequence(np.array([0.01, 0.02]), 0.05) == 1


# ------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "losses,match",
    [
        (np.zeros(10), r"must be a 2-D array .*got 1-D"),
        (np.zeros((2, 3, 4)), r"must be a 2-D array .*got 3-D"),
        (np.zeros((0, 3)), "has no rows"),
        (np.zeros((5, 0)), "has no columns"),
        (np.array([[0.0, np.nan]]), "NaN or infinite"),
        (np.array([[0.0, np.inf]]), "NaN or infinite"),
        (np.array([[0.0, 1.5]]), r"must lie in \[0, 1\]"),
        (np.array([[-0.1, 0.5]]), r"must lie in \[0, 1\]"),
        ([["a", "b"]], "numeric array"),
    ],
)
def test_bad_losses(losses, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        learn_then_test(losses, 0.1, 0.1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"epsilon": 0.0}, "epsilon must lie strictly between 0 and 1"),
        ({"epsilon": 1.0}, "epsilon must lie strictly between 0 and 1"),
        ({"epsilon": float("nan")}, "epsilon must lie strictly between 0 and 1"),
        ({"epsilon": "x"}, "epsilon must be a number"),
        ({"delta": 0.0}, "delta must lie strictly between 0 and 1"),
        ({"delta": 1.2}, "delta must lie strictly between 0 and 1"),
        ({"k_policies": 0}, "k_policies must be >= 1"),
        ({"k_policies": 2.0}, "k_policies must be a positive integer"),
        ({"method": "bonferroni"}, "unknown p-value method 'bonferroni'"),
    ],
)
def test_bad_parameters(kwargs: dict, match: str) -> None:
    args = {"epsilon": 0.1, "delta": 0.1, **kwargs}
    eps, delta = args.pop("epsilon"), args.pop("delta")
    with pytest.raises(ConfigError, match=match):
        learn_then_test(np.zeros((10, 2)), eps, delta, **args)


def test_binomial_requires_binary_losses() -> None:
    with pytest.raises(ConfigError, match=r"method='binomial' needs losses in \{0, 1\}"):
        learn_then_test(np.full((10, 2), 0.5), 0.1, 0.1, method="binomial")


def test_unknown_method_is_unknown_name_error() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'hb'"):
        learn_then_test(np.zeros((10, 2)), 0.1, 0.1, method="hbb")


# ----------------------------------------------------------------- Certificate


def test_certificate_round_trip() -> None:
    cert = learn_then_test(_columns(0, 3, 40), 0.1, 0.1, k_policies=3).certificate
    data = cert.to_dict()
    assert Certificate.from_dict(json.loads(json.dumps(data))) == cert
    with pytest.raises(ConfigError, match="missing: epsilon"):
        Certificate.from_dict({k: v for k, v in data.items() if k != "epsilon"})
    with pytest.raises(ConfigError, match="unknown: extra"):
        Certificate.from_dict({**data, "extra": 1})
    with pytest.raises(ConfigError, match="unknown guarantee"):
        Certificate.from_dict({**data, "guarantee": "strong"})


def test_certificate_is_frozen() -> None:
    cert = learn_then_test(np.zeros((10, 1)), 0.5, 0.1).certificate
    with pytest.raises(AttributeError):
        cert.epsilon = 0.2  # type: ignore[misc]


# --------------------------------------------------------------- LearnThenTest


def test_estimator_matches_function() -> None:
    losses = _columns(0, 1, 3, 9, 20)
    est = LearnThenTest(epsilon=0.1, delta=0.1, method="binomial", k_policies=2)
    assert est.calibrate(losses) is est
    ref = learn_then_test(losses, 0.1, 0.1, method="binomial", k_policies=2)
    assert est.index_ == ref.index
    assert est.certificate_ == ref.certificate
    np.testing.assert_array_equal(est.p_values_, ref.p_values)
    np.testing.assert_array_equal(est.risks_, ref.risks)
    assert "LearnThenTest(epsilon=0.1" in repr(est)


@pytest.mark.parametrize("attr", ["index_", "certificate_", "p_values_", "risks_"])
def test_estimator_not_fitted(attr: str) -> None:
    est = LearnThenTest(0.1, 0.1)
    with pytest.raises(NotFittedError, match=r"call \.calibrate\(losses\) first"):
        getattr(est, attr)


def test_estimator_init_only_stores() -> None:
    est = LearnThenTest(epsilon=5, delta=-1, method="nope")  # validated at calibrate
    with pytest.raises(ConfigError, match="epsilon"):
        est.calibrate(np.zeros((3, 2)))


# ------------------------------------------------------------ LTT properties

_loss_matrix = hnp.arrays(
    dtype=float,
    shape=st.tuples(st.integers(1, 60), st.integers(1, 12)),
    elements=st.sampled_from([0.0, 1.0]),
)


@settings(max_examples=80, deadline=None)
@given(
    losses=_loss_matrix,
    eps=st.floats(0.01, 0.9),
    delta=st.floats(0.01, 0.5),
    k=st.integers(1, 5),
    method=st.sampled_from(["hb", "binomial"]),
)
def test_selected_index_has_no_gap(losses, eps, delta, k, method) -> None:
    res = learn_then_test(losses, eps, delta, method=method, k_policies=k)
    level = delta / k
    rejected = res.p_values <= level
    assert res.index == _reference_fixed_sequence(res.p_values, level)
    if res.index is None:
        assert not rejected[0]
    else:
        assert rejected[: res.index + 1].all()
        if res.index + 1 < losses.shape[1]:
            assert not rejected[res.index + 1]


@settings(max_examples=60, deadline=None)
@given(
    losses=_loss_matrix,
    e1=st.floats(0.01, 0.9),
    e2=st.floats(0.01, 0.9),
    d1=st.floats(0.01, 0.5),
    d2=st.floats(0.01, 0.5),
)
def test_index_monotone_in_epsilon_and_delta(losses, e1, e2, d1, d2) -> None:
    def idx(e: float, d: float) -> int:
        i = learn_then_test(losses, e, d).index
        return -1 if i is None else i

    e_lo, e_hi = sorted((e1, e2))
    d_lo, d_hi = sorted((d1, d2))
    assert idx(e_lo, d_lo) <= idx(e_hi, d_lo)
    assert idx(e_lo, d_lo) <= idx(e_lo, d_hi)


# ------------------------------------------------------------------------- CRC


def test_crc_hand_computed() -> None:
    losses = np.array([[0, 0, 1], [0, 0, 0], [0, 1, 1]] * 10, dtype=float)
    res = conformal_risk_control(losses, 0.4)
    n = 30
    np.testing.assert_allclose(res.risks, [0, 1 / 3, 2 / 3])
    np.testing.assert_allclose(res.adjusted_risks, n / (n + 1) * res.risks + 1 / (n + 1))
    assert res.index == 1
    cert = res.certificate
    assert cert.guarantee == "marginal" and cert.method == "crc"
    assert cert.delta is None and cert.delta_per_test is None and cert.p_value is None
    assert cert.n == 30 and cert.certified and cert.empirical_risk == pytest.approx(1 / 3)


def test_crc_monotonizes_losses() -> None:
    # Unit 0 loses at column 0 but not at column 1: the running max makes it lose at 1.
    losses = np.array([[1.0, 0.0, 0.0]] + [[0.0, 0.0, 0.0]] * 99)
    res = conformal_risk_control(losses, 0.05)
    np.testing.assert_allclose(res.risks, [0.01, 0.01, 0.01])
    assert res.index == 2


def test_crc_none_when_column_zero_fails() -> None:
    # with n = 9 the correction B/(n+1) = 0.1 already exceeds epsilon = 0.05
    res = conformal_risk_control(np.zeros((9, 3)), 0.05)
    assert res.index is None and not res.certificate.certified


def test_crc_bound_and_errors() -> None:
    losses = np.full((50, 2), 1.0)
    losses[:, 1] = 3.0
    res = conformal_risk_control(losses, 2.0, bound=4.0)
    assert res.index == 0
    with pytest.raises(ConfigError, match=r"must lie in \[0, 4\]"):
        conformal_risk_control(losses + 2, 2.0, bound=4.0)
    with pytest.raises(ConfigError, match="epsilon must lie strictly between 0 and bound=4"):
        conformal_risk_control(losses, 4.0, bound=4.0)
    with pytest.raises(ConfigError, match="bound must be a positive finite number"):
        conformal_risk_control(losses, 0.1, bound=0.0)
    with pytest.raises(ConfigError, match="2-D"):
        conformal_risk_control(np.zeros(5), 0.1)


_frac_matrix = hnp.arrays(
    dtype=float,
    shape=st.tuples(st.integers(1, 60), st.integers(1, 10)),
    elements=st.floats(0.0, 1.0),
)


@settings(max_examples=80, deadline=None)
@given(losses=_frac_matrix, e1=st.floats(0.01, 0.99), e2=st.floats(0.01, 0.99))
def test_crc_properties(losses, e1, e2) -> None:
    lo, hi = sorted((e1, e2))
    r_lo = conformal_risk_control(losses, lo)
    r_hi = conformal_risk_control(losses, hi)
    # monotone risks after the running maximum
    assert np.all(np.diff(r_lo.risks) >= -1e-12)
    # larger epsilon never selects a safer setting
    i_lo = -1 if r_lo.index is None else r_lo.index
    i_hi = -1 if r_hi.index is None else r_hi.index
    assert i_lo <= i_hi
    # every setting up to the chosen one passes, the next one fails
    ok = r_lo.adjusted_risks <= lo
    assert ok[: i_lo + 1].all()
    if i_lo + 1 < losses.shape[1]:
        assert not ok[i_lo + 1]
