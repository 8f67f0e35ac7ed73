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
