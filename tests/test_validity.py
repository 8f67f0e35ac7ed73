"""The validity suite: `stopwise validate` on every bundled set and on the controls.

Run with ``pytest -m validity``. LTT must be consistent with delta on every
certified family; the naive calibrator must visibly violate somewhere.
"""

import pytest

from stopwise.bench import validate_controls, validate_set
from stopwise.data import bundled_paths
from stopwise.traces import read_trace_set

pytestmark = pytest.mark.validity


@pytest.mark.parametrize("path", bundled_paths(), ids=lambda p: p.name)
def test_ltt_consistent_on_bundled_set(path):
    ts = read_trace_set(path)
    rows = validate_set(ts, draws=1000, seed=1)
    for r in rows:
        if not r["policy"].startswith("naive-control"):
            assert r["consistent"], r


def test_naive_control_violates_on_bundled_sets():
    violated = []
    for path in bundled_paths():
        for r in validate_set(read_trace_set(path), draws=500, seed=2):
            if r["policy"].startswith("naive-control") and not r["consistent"]:
                violated.append((path.name, r["policy"], r["violation_frequency"]))
    assert len(violated) >= 5, violated


def test_controls():
    rows = {r["policy"]: r for r in validate_controls(epsilon=0.05, delta=0.1, draws=2000, seed=3)}
    assert rows["synthetic-control:ltt"]["consistent"]
    assert not rows["synthetic-control:naive"]["consistent"]
    assert rows["synthetic-control:naive"]["ci_low"] > 0.1
