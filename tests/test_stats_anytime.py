import numpy as np
import pytest

from stopwise.stats.anytime import RiskMonitor, mixture_halfwidth


def test_halfwidth_shrinks_and_is_finite():
    w = [mixture_halfwidth(n, 0.05) for n in (1, 10, 100, 1000, 10000)]
    assert all(a > b for a, b in zip(w, w[1:])) and w[-1] < 0.03
    assert mixture_halfwidth(0, 0.05) == float("inf")
    with pytest.raises(ValueError):
        mixture_halfwidth(5, 1.5)


def test_monitor_alarms_only_when_the_rate_is_above_epsilon():
    rng = np.random.default_rng(0)
    hi, lo = RiskMonitor(epsilon=0.05), RiskMonitor(epsilon=0.05)
    for _ in range(600):
        hi.update(float(rng.random() < 0.25))
        lo.update(float(rng.random() < 0.02))
    assert hi.alarm and hi.lower > 0.05 and not lo.alarm
    assert lo.lower <= 0.02 <= lo.upper


@pytest.mark.validity
@pytest.mark.parametrize("p", [0.02, 0.1, 0.5])
def test_time_uniform_coverage(p):
    """Over many streams, the true rate leaves the sequence at ANY time in at most alpha of them
    (a fixed-n interval checked at every n would fail far more often: the negative control)."""
    rng = np.random.default_rng(int(p * 1000))
    alpha, n, streams = 0.1, 1500, 1000
    x = (rng.random((streams, n)) < p).astype(np.float64)
    ns = np.arange(1, n + 1)
    means = np.cumsum(x, axis=1) / ns
    hw = np.array([mixture_halfwidth(int(k), alpha) for k in ns])
    miss = (np.abs(means - p) > hw).any(axis=1).mean()
    assert miss <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / streams)
    # negative control: a fixed-n (Wald) interval at the same level, peeked at every n >= 30,
    # is not anytime-valid: it misses far more often than alpha
    from scipy.stats import norm

    z = norm.ppf(1 - alpha / 2)
    k = ns >= 30
    naive = z * np.sqrt(np.maximum(means * (1 - means), 1e-12) / ns)
    naive_miss = (np.abs(means - p) > naive)[:, k].any(axis=1).mean()
    assert naive_miss > 2 * alpha
