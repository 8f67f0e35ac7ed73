"""Tests for stopwise.stats.validate, plus the import boundary of stopwise.stats."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import stopwise.stats
from stopwise.errors import ConfigError, UnknownNameError
from stopwise.stats import (
    learn_then_test,
    ltt_calibrator,
    naive_calibrator,
    synthetic_population,
    validate_calibrator,
)

EPS, DELTA = 0.1, 0.1


@pytest.fixture(scope="module")
def population() -> tuple[np.ndarray, np.ndarray]:
    # 100 settings with risk rising linearly from 0 to 0.3: about 60 columns
    # sit above epsilon = 0.1, many of them just above it.
    return synthetic_population(600, 100, seed=0)


# ------------------------------------------------------------ synthetic_population


def test_synthetic_population_exact_risks(population) -> None:
    losses, risks = population
    assert losses.shape == (600, 100)
    assert set(np.unique(losses)) <= {0.0, 1.0}
    np.testing.assert_allclose(losses.mean(axis=0), risks, atol=1e-15)
    np.testing.assert_allclose(risks, np.round(np.linspace(0, 0.3, 100) * 600) / 600)
    # nested: losses never decrease along the grid
    assert np.all(np.diff(losses, axis=1) >= 0)
    assert (risks > EPS).sum() > 50


def test_synthetic_population_explicit_grid_and_independent_columns() -> None:
    losses, risks = synthetic_population(200, [0.3, 0.1, 0.2], seed=3, nested=False)
    np.testing.assert_allclose(risks, [0.3, 0.1, 0.2])
    np.testing.assert_allclose(losses.mean(axis=0), risks)
    again, _ = synthetic_population(200, [0.3, 0.1, 0.2], seed=3, nested=False)
    np.testing.assert_array_equal(losses, again)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((0, 5), {}, "n_units must be >= 1"),
        ((10, 0), {}, "grid must be >= 1"),
        ((10, [0.2, 0.1]), {}, "non-decreasing"),
        ((10, [0.2, 1.1]), {}, r"lie in \[0, 1\]"),
        ((10, [[0.1]]), {}, "1-D array"),
        ((10, 5), {"max_risk": 2.0}, r"max_risk must lie in \[0, 1\]"),
    ],
)
def test_synthetic_population_errors(args, kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        synthetic_population(*args, **kwargs)


# ----------------------------------------------------------------- calibrators


def test_naive_calibrator_picks_most_aggressive_passing_column() -> None:
    cal = naive_calibrator(0.1)
    losses = np.array([[0.0, 0.5, 0.1, 0.3], [0.0, 0.0, 0.1, 0.3]])
    assert cal(losses) == 2  # column 1 fails, but naive does not stop there
    assert cal(np.ones((3, 2))) is None


def test_ltt_calibrator_matches_learn_then_test(population) -> None:
    losses, _ = population
    sub = losses[:150]
    for method in ("hb", "binomial"):
        cal = ltt_calibrator(EPS, DELTA, method, k_policies=2)
        assert cal(sub) == learn_then_test(sub, EPS, DELTA, method=method, k_policies=2).index


def test_ltt_calibrator_fails_early_on_bad_method() -> None:
    with pytest.raises(UnknownNameError, match="p-value method"):
        ltt_calibrator(EPS, DELTA, "bogus")
    with pytest.raises(ConfigError, match="delta must lie strictly between 0 and 1"):
        ltt_calibrator(EPS, 0.0)


# -------------------------------------------------------- validate_calibrator


def test_ltt_is_consistent(population) -> None:
    losses, _ = population
    res = validate_calibrator(losses, 100, 300, ltt_calibrator(EPS, DELTA), EPS, DELTA, seed=1)
    assert res.draws == 300 and res.n_calibration == 100
    assert res.consistent
    assert res.violation_frequency <= DELTA
    assert res.ci_low <= res.violation_frequency <= res.ci_high


def test_naive_violates_far_more_than_delta(population) -> None:
    losses, _ = population
    res = validate_calibrator(losses, 50, 300, naive_calibrator(EPS), EPS, DELTA, seed=1)
    assert res.violation_frequency > 3 * DELTA
    assert res.ci_low > DELTA
    assert not res.consistent
    assert res.p_value < 1e-6


def test_result_fields_match_scipy(population) -> None:
    losses, _ = population
    res = validate_calibrator(losses, 50, 200, naive_calibrator(EPS), EPS, DELTA, seed=7)
    assert res.violation_frequency == res.violations / res.draws
    expected = stats.binomtest(res.violations, res.draws, DELTA, alternative="greater")
    assert res.p_value == pytest.approx(expected.pvalue)
    two_sided = stats.binomtest(res.violations, res.draws, DELTA)
    ci = two_sided.proportion_ci(confidence_level=0.95, method="exact")
    assert res.ci_low == pytest.approx(ci.low) and res.ci_high == pytest.approx(ci.high)
    assert res.to_dict()["violations"] == res.violations


def test_same_seed_same_result(population) -> None:
    losses, _ = population
    cal = naive_calibrator(EPS)
    a = validate_calibrator(losses, 50, 100, cal, EPS, DELTA, seed=5)
    b = validate_calibrator(losses, 50, 100, cal, EPS, DELTA, seed=5)
    assert a == b


def test_none_is_never_a_violation(population) -> None:
    losses, _ = population
    res = validate_calibrator(losses, 10, 50, lambda sub: None, EPS, DELTA)
    assert res.violations == 0 and res.uncertified == 50 and res.consistent


def test_subsets_have_the_requested_shape(population) -> None:
    losses, _ = population
    seen = []

    def spy(sub: np.ndarray) -> int:
        seen.append(sub.shape)
        assert len({tuple(r) for r in sub}) <= sub.shape[0]
        return 0

    validate_calibrator(losses, 17, 5, spy, EPS, DELTA)
    assert seen == [(17, 100)] * 5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_calibration": 601}, "exceeds the population size 600"),
        ({"n_calibration": 0}, "n_calibration must be >= 1"),
        ({"draws": 0}, "draws must be >= 1"),
        ({"calibrate": "ltt"}, "calibrate must be callable"),
        ({"calibrate": lambda s: 100}, r"column 100, outside 0\.\.99"),
        ({"calibrate": lambda s: 1.5}, "expected a column index or None"),
        ({"epsilon": 0.0}, "epsilon must lie strictly between 0 and 1"),
        ({"delta": 1.0}, "delta must lie strictly between 0 and 1"),
    ],
)
def test_validate_bad_inputs(population, kwargs, match) -> None:
    losses, _ = population
    args = {
        "n_calibration": 50,
        "draws": 3,
        "calibrate": naive_calibrator(EPS),
        "epsilon": EPS,
        "delta": DELTA,
        **kwargs,
    }
    with pytest.raises(ConfigError, match=match):
        validate_calibrator(losses, **args)


def test_validate_bad_population() -> None:
    with pytest.raises(ConfigError, match=r"population_losses must lie in \[0, 1\]"):
        validate_calibrator(np.full((10, 2), 2.0), 5, 3, naive_calibrator(EPS), EPS, DELTA)


# -------------------------------------------------------------- import boundary

_ALLOWED_ROOTS = {"numpy", "scipy", "stopwise"}


def test_stats_imports_only_numpy_scipy_stdlib_and_errors() -> None:
    pkg_dir = Path(stopwise.stats.__file__).parent
    for path in sorted(pkg_dir.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if root == "stopwise":
                    assert name == "stopwise.errors" or name.startswith("stopwise.stats"), (
                        f"{path.name} imports {name}"
                    )
                elif root not in _ALLOWED_ROOTS:
                    assert root in sys.stdlib_module_names or root == "__future__", (
                        f"{path.name} imports {name}"
                    )
