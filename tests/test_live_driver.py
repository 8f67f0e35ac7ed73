"""One policy, two drivers: the live driver over a backend that streams logged
traces gives exactly the reference replay driver's decisions and accounting."""

import asyncio

import numpy as np
import pytest

from stopwise.engine.live import AnswerClasses, LiveDriver
from stopwise.engine.trace_backend import question_chains, trace_opener
from stopwise.policies.registry import family_names, get_family
from stopwise.replay.reference import _load_chains, run_unit
from stopwise.traces.synthetic import synthetic_trace_set

from replay_asserts import make_family


@pytest.fixture(scope="module")
def ts():
    return synthetic_trace_set(8, 20, mean_tokens=90, seed=11)


def live(family, k, rows):
    drv = LiveDriver(trace_opener(rows), AnswerClasses(), max_chains=len(rows), family_name=family.name)
    return asyncio.run(drv.run(family.make(k, n_chains=len(rows))))


@pytest.mark.parametrize("name", family_names())
def test_live_equals_replay(ts, name):
    fam = make_family(name)
    if fam.supports(ts) is not None:
        pytest.skip(fam.supports(ts))
    grid = range(len(fam.grid))
    checked = 0
    for q in range(ts.n_questions):
        rows = question_chains(ts, q)
        off = ts.question_offsets
        chain_rows = np.arange(off[q], off[q + 1])
        logged = _load_chains(ts, chain_rows)
        units = [[r] for r in chain_rows] if fam.kind == "single" else [list(chain_rows)]
        for unit in units[:3]:
            lrows = [rows[int(r - off[q])] for r in unit]
            for k in grid:
                ref = run_unit(fam.make(k, n_chains=len(unit)), [logged[r] for r in unit], name)
                got = live(fam, k, lrows)
                assert (got.answer, got.abstained, got.escalated) == (ref.answer, ref.abstained, ref.escalated), (q, unit, k)
                assert (got.tokens, got.probe_tokens, got.latency, got.chains) == (ref.tokens, ref.probe_tokens, ref.latency, ref.chains), (q, unit, k)
                assert got.returned == ref.returned
                assert got.generated >= got.tokens
                checked += 1
    assert checked > 0
