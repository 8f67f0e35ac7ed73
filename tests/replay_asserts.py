"""Shared assertion for tests: a vectorized sweep equals the reference driver, array by array."""

import numpy as np
import pytest

REPLAY_FIELDS = (
    "grid",
    "answer",
    "abstained",
    "tokens",
    "probe_tokens",
    "latency",
    "chains",
    "answer_full",
    "tokens_full",
    "probe_tokens_full",
    "latency_full",
    "chains_full",
    "correct_class",
    "unit_question",
)


def assert_same_result(fast, ref) -> None:  # noqa: ANN001
    """Every array of two ReplayResults is equal, with the same dtype and shape."""
    assert fast.family == ref.family and fast.unit == ref.unit
    for name in REPLAY_FIELDS:
        a, b = getattr(fast, name), getattr(ref, name)
        assert a.dtype == b.dtype, f"{fast.family}.{name}: dtype {a.dtype} != {b.dtype}"
        assert a.shape == b.shape, f"{fast.family}.{name}: shape {a.shape} != {b.shape}"
        if not np.array_equal(a, b):
            where = np.argwhere(a != b)[:5].tolist()
            pytest.fail(f"{fast.family}.{name} differs at {where}: sweep {[a[tuple(w)] for w in where]}, reference {[b[tuple(w)] for w in where]}")


_LEARNED_MODEL = None


def learned_model():  # noqa: ANN201
    """A probe model fitted once on a synthetic set (every feature group), for families that need one."""
    global _LEARNED_MODEL
    if _LEARNED_MODEL is None:
        from stopwise.policies.learned import train_probe_model
        from stopwise.traces.synthetic import synthetic_trace_set

        _LEARNED_MODEL = train_probe_model(synthetic_trace_set(60, 2, mean_tokens=200, seed=1))
    return _LEARNED_MODEL


def make_family(name: str, **settings):  # noqa: ANN003, ANN201
    """``get_family`` for tests: ``learned_exit`` gets the fixed synthetic model unless one is given."""
    from stopwise.policies.registry import get_family

    if name in ("learned_exit", "combined"):
        settings.setdefault("model", learned_model())
    return get_family(name, **settings)
