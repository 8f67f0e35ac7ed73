"""Weak-to-strong cascades: the RouteLLM loader, the losses, and the certified cascade on the real responses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stopwise.errors import TraceFormatError
from stopwise.routing import GRID, cascade, load_routellm, router_losses, validate_cascade

from conftest import SHARED_DATA

REAL = SHARED_DATA / "routing" / "routellm_gsm8k_responses.csv"
needs_real = pytest.mark.skipif(not REAL.is_file(), reason="needs ../shared/data beside the checkout")
HEADER = "prompt,weak,strong,weak_response,strong_response\n"


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "fixture_routing.csv"  # a hand-written fixture, not real data
    p.write_text(text)
    return p


def test_loader_errors_name_file_line_and_field(tmp_path):
    with pytest.raises(TraceFormatError, match=r"fixture_routing.csv:1: header"):
        load_routellm(write(tmp_path, "prompt,a,b\nx,1,2\n"))
    with pytest.raises(TraceFormatError, match=r"fixture_routing.csv:3: field 'strong': 'maybe' is not True or False"):
        load_routellm(write(tmp_path, HEADER + "q1,True,False,r,s\nq2,True,maybe,r,s\n"))
    with pytest.raises(TraceFormatError, match=r":2: 3 fields, expected 5"):
        load_routellm(write(tmp_path, HEADER + "q1,True,False\n"))
    with pytest.raises(TraceFormatError, match="not found"):
        load_routellm(tmp_path / "nope.csv")
    d = load_routellm(write(tmp_path, HEADER + '"multi\nline",True,False,"a\nb",s\n'))
    assert d.prompts == ["multi\nline"] and d.weak_ok.tolist() == [True] and d.question_ids[0].startswith("q-")


def test_losses_safe_end_and_monotone(tmp_path):
    d = load_routellm(write(tmp_path, HEADER + "a,False,True,x,y\nb,True,True,x,y\nc,False,False,x,y\n"))
    loss, kept = router_losses(d, np.array([0.9, 0.5, 0.1]))
    assert GRID[0] == 1.0 and GRID[-1] == 0.0
    assert not kept[:, 0].any() and (loss[:, 0] == 0).all()
    assert (np.diff(kept.astype(int), axis=1) >= 0).all(), "a lower threshold keeps at least as many weak answers"
    assert loss[0, -1] == 1 and loss[1].sum() == 0 and loss[2].sum() == 0  # only 'weak wrong, strong right' loses


@needs_real
def test_certified_cascade_on_routellm_gsm8k():
    r = cascade(load_routellm(REAL), epsilon=0.1)
    assert r["n_train"] + r["n_calibration"] + r["n_test"] == 1319
    assert r["certified"] and 0.55 < r["router_auroc"] < 1.0
    assert r["oracle_escalated"] <= r["escalated"] <= 1.0 and r["cost"] < 1.0
    assert r["accuracy_cascade"] >= r["accuracy_weak"]


@needs_real
@pytest.mark.validity
def test_cascade_guarantee_holds_where_the_naive_calibrator_fails():
    rows = {r["policy"]: r for r in validate_cascade(load_routellm(REAL), epsilon=0.15, draws=300, seed=1)}
    assert rows["cascade"]["consistent"], rows["cascade"]
    assert not rows["naive-control:cascade"]["consistent"], rows["naive-control:cascade"]
