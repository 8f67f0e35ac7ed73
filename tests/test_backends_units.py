"""Unit tests of the embedded backend's numpy parts and the collector's helpers (no model)."""

import math

import numpy as np
import pytest

from stopwise.backends.base import Sampling
from stopwise.backends.llama_engine import logit_stats, sample_token
from stopwise.backends.probes import forced_answer as probe_answer
from stopwise.backends.probes import token_cue
from stopwise.collect import chain_seed


def test_logit_stats_match_a_full_softmax():
    rng = np.random.default_rng(0)
    x = rng.normal(size=5000).astype(np.float32) * 3
    lse, top_ids, top_lp, ent, conf, cand_ids, cand_logits = logit_stats(x)
    xd = x.astype(np.float64)
    logp = xd - np.log(np.exp(xd - xd.max()).sum()) - xd.max()
    order = np.argsort(-xd)
    assert list(top_ids) == list(order[:5])
    np.testing.assert_allclose(top_lp, logp[order[:5]], rtol=1e-5, atol=1e-5)
    assert math.isclose(ent, float(-(np.exp(logp) * logp).sum()), rel_tol=1e-4)
    assert math.isclose(conf, float(-logp[order[:20]].mean()), rel_tol=1e-5)
    assert list(cand_ids) == list(order[:40])
    assert math.isclose(float(x[3]) - lse, logp[3], abs_tol=1e-4)


def test_sample_token_greedy_and_distribution():
    cand = np.arange(40)
    logits = np.linspace(0, -8, 40).astype(np.float32)
    rng = np.random.default_rng(1)
    assert sample_token(cand, logits, Sampling(temperature=0), rng) == 0
    s = Sampling(temperature=1.0, top_p=1.0, top_k=0)
    draws = np.array([sample_token(cand, logits, s, rng) for _ in range(20000)])
    p = np.exp(logits - logits.max())
    p /= p.sum()
    emp = np.bincount(draws, minlength=40) / len(draws)
    assert np.abs(emp[:5] - p[:5]).max() < 0.02
    # top-k 2 keeps only the two best
    s2 = Sampling(temperature=1.0, top_p=1.0, top_k=2)
    assert set(sample_token(cand, logits, s2, rng) for _ in range(500)) <= {0, 1}
    # top-p 0.3 keeps the smallest prefix with mass >= 0.3
    s3 = Sampling(temperature=1.0, top_p=0.3, top_k=0)
    keep = int(np.searchsorted(np.cumsum(p), 0.3) + 1)
    assert max(sample_token(cand, logits, s3, rng) for _ in range(500)) < keep


def test_no_top_k_samples_the_whole_vocabulary_given_the_row():
    """top_k 0 means no cut: with the whole logits row, tokens beyond the 40 candidates are drawn in
    their softmax proportion, and top-p is taken of the full softmax."""
    rng = np.random.default_rng(3)
    row = np.zeros(1000, dtype=np.float32)  # a flat row: every token equally likely
    row[:5] = 3.0  # five likelier ones: 5e^3 / (5e^3 + 995), about 0.09 together
    cand_ids, cand_logits = logit_stats(row)[5:]
    s = Sampling(temperature=1.0, top_p=1.0, top_k=0)
    draws = np.array([sample_token(cand_ids, cand_logits, s, rng, logits=row) for _ in range(20000)])
    p = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
    assert abs(float(np.isin(draws, np.arange(5)).mean()) - float(p[:5].sum())) < 0.02
    assert len(set(draws.tolist())) > 900  # the flat tail is reached, not only the 40 candidates
    # without the row, the candidates bound it (as before)
    assert {sample_token(cand_ids, cand_logits, s, rng) for _ in range(2000)} <= set(cand_ids.tolist())
    # top-p 0.75 of the full softmax: the five, then about 720 of the flat tail
    s2 = Sampling(temperature=1.0, top_p=0.75, top_k=0)
    kept = {sample_token(cand_ids, cand_logits, s2, rng, logits=row) for _ in range(20000)}
    want = int(np.searchsorted(np.cumsum(np.sort(p)[::-1]), 0.75) + 1)
    assert set(range(5)) <= kept and want - 60 < len(kept) <= want
    # top-k 100 over the row: a hundred tokens at most, the five among them
    s3 = Sampling(temperature=1.0, top_p=1.0, top_k=100)
    kept = {sample_token(cand_ids, cand_logits, s3, rng, logits=row) for _ in range(5000)}
    assert set(range(5)) <= kept and 60 < len(kept) <= 100


def test_sampling_uses_one_draw_per_token():
    cand = np.arange(40)
    logits = np.linspace(0, -8, 40).astype(np.float32)
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    sample_token(cand, logits, Sampling(temperature=0), a)
    sample_token(cand, logits, Sampling(temperature=0.7), b)
    assert a.random() == b.random()


@pytest.mark.parametrize(
    "text,expected",
    [("42}$.", "42"), ("\\frac{1}{2}}", "\\frac{1}{2}"), (" 7 } and", "7"), ("12", None), ("}", None)],
)
def test_probe_answer(text, expected):
    assert probe_answer(text) == expected


def test_token_cues():
    assert token_cue(" Wait", "x") == ("wait", True)
    assert token_cue(",", "x") == (None, False)
    assert token_cue(".\n\n", "x") == ("blank_line", False)
    assert token_cue("\n", "ok.\n") == ("blank_line", False)
    assert token_cue(" But", "") == ("but", True)
    assert token_cue(" butter", "") == (None, False)


def test_chain_seed_is_stable_and_distinct():
    assert chain_seed(0, "q1", 0) == chain_seed(0, "q1", 0)
    assert len({chain_seed(0, "q1", s) for s in range(50)}) == 50
    assert chain_seed(0, "q1", 0) != chain_seed(1, "q1", 0)
    assert 0 <= chain_seed(3, "q", 2) < 2**63


def test_probe_schedule_positions_match_the_collectors_rules():
    from stopwise.backends.probes import ProbeSchedule

    texts = ["So", " x", ".\n\n", "Then", " y", " Wait", ",", " z"]
    s = ProbeSchedule(every=4, cues=True)
    got = {p: s.at(texts, p, finished=False) for p in range(1, len(texts) + 1)}
    assert got[3] == ["blank_line"]  # after the blank line
    assert got[5] == ["wait"]  # before "Wait"
    assert got[4] == ["schedule"] and got[8] == ["schedule"]
    assert got[1] == got[2] == got[6] == got[7] == []
    assert ProbeSchedule(every=4, cues=True).at(texts, 8, finished=True) == []
    assert ProbeSchedule(every=0, cues=False).at(texts, 5, finished=False) == []
