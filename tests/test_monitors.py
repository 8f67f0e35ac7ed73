"""Signal monitors: the entropy (path deviation) monitor fires where its window says, in both drivers."""

from __future__ import annotations

import math

import numpy as np

from stopwise.policies.monitors import EntropyMonitor
from stopwise.replay import run_reference
from stopwise.traces.model import Provenance, trace_set_from_columns
from stopwise.traces.schema import CHAIN_COLUMNS, QUESTION_SCHEMA

from replay_asserts import assert_same_result


def entropy_set(patterns: list[list[float]]):
    q = {f.name: [] for f in QUESTION_SCHEMA}
    c = {k: [] for k in CHAIN_COLUMNS}
    for i, ent in enumerate(patterns):
        for k, v in dict(question_id=f"q{i}", question=None, reference=None, reference_class=0, n_classes=3,
                         class_answers=None, metadata=None).items():
            q[k].append(v)
        n = len(ent)
        pos = list(range(16, n + 1, 16))
        rec = {k: None for k in CHAIN_COLUMNS}
        rec.update(question_id=f"q{i}", sample_id=0, n_tokens=n, answer_class=0, finish_reason="stop", entropy=ent,
                   probe_position=pos, probe_class=[(p // 16) % 3 for p in pos], probe_logprob=[-0.1] * len(pos),
                   probe_cost=[7] * len(pos), probe_cue=["schedule"] * len(pos))
        for k in CHAIN_COLUMNS:
            c[k].append(rec[k])
    return trace_set_from_columns("entropy", q, c, Provenance(source="test"))


def test_fires_where_the_window_crosses_the_limit_and_matches_the_reference():
    calm, wander = [0.5] * 64, [3.0] * 96
    ts = entropy_set([calm + wander, calm * 3, [float("nan")] * 10 + wander])
    fam = EntropyMonitor()
    res = fam.replay(ts)
    assert_same_result(res, run_reference(fam, ts))
    g = fam.grid.tolist()
    for k, limit in enumerate(g):
        fire = 64 + math.ceil(limit * 64) if limit <= 1 else None  # chain 0: count after 64+j tokens is j
        if fire is None:
            assert res.tokens[0, k] == 160 and res.probe_tokens[0, k] == 0
        else:
            stop = -(-fire // 16) * 16  # the first probe at or after the firing position
            assert res.tokens[0, k] == stop and res.probe_tokens[0, k] == 7  # only the answering probe is paid
    assert (res.tokens[1] == 192).all(), "a calm chain never fires"
    assert res.tokens[2, -1] < 106, "NaN entropies count as calm, then the wandering fires it"


def test_settings_and_support():
    fam = EntropyMonitor(window=32)
    assert fam.settings()["window"] == 32
    ts = entropy_set([[0.1] * 40])
    assert fam.supports(ts) is None
    assert np.all(np.diff(fam.grid) < 0)
