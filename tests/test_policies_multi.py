"""Multi-chain families: the vectorized sweep equals the reference driver, and hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import integrate, special

from stopwise.errors import ConfigError
from stopwise.policies.base import MISSING, Final, Finished, Spawn, Stop, Tokens
from stopwise.policies.deepconf import DeepConfOnline
from stopwise.policies.multi import (
    ESC,
    AdaptiveConsistency,
    FirstFinish,
    MajorityVote,
    VoteMarginAbstain,
    ac_stop_probability,
    percentile_rows,
)
from stopwise.replay.reference import run_reference
from stopwise.traces.model import Provenance, TraceSet, trace_set_from_columns
from stopwise.traces.schema import CHAIN_COLUMNS, QUESTION_SCHEMA
from stopwise.traces.synthetic import synthetic_trace_set

from stopwise.policies.eprocess import EProcessVote

from replay_asserts import assert_same_result, make_family

def families(window: int = 24, warmup: int = 4) -> list:
    return [
        MajorityVote(),
        AdaptiveConsistency(),
        ESC(),
        FirstFinish(),
        DeepConfOnline(window=window, warmup=warmup),
        VoteMarginAbstain(),
        EProcessVote(),
        make_family("combined"),
    ]


def assert_same(fast, ref) -> None:
    assert fast.unit == "question"
    assert_same_result(fast, ref)


def make_set(questions: list[list[tuple]], name: str = "handmade") -> TraceSet:
    """A trace set from ``questions[q] = [(n_tokens, class[, confidences]), ...]`` (other columns null)."""
    q_rows = {f.name: [] for f in QUESTION_SCHEMA}
    c_rows = {c: [] for c in CHAIN_COLUMNS}
    for qi, chains in enumerate(questions):
        qid = f"q{qi:03d}"
        q_rows["question_id"].append(qid)
        q_rows["question"].append(None)
        q_rows["reference"].append("0")
        q_rows["reference_class"].append(0)
        q_rows["n_classes"].append(8)
        q_rows["class_answers"].append([str(i) for i in range(8)])
        q_rows["metadata"].append(None)
        for s, chain in enumerate(chains):
            n, cls = chain[0], chain[1]
            conf = chain[2] if len(chain) > 2 else None
            row = dict.fromkeys(CHAIN_COLUMNS)
            row.update(
                question_id=qid,
                sample_id=s,
                n_tokens=n,
                answer=None if cls < 0 else str(cls),
                answer_class=cls,
                token_confidence=None if conf is None else [None if c is None else float(c) for c in conf],
            )
            for k, v in row.items():
                c_rows[k].append(v)
    return trace_set_from_columns(name, q_rows, c_rows, Provenance(source="test"))


# --- sweep == reference ----------------------------------------------------------------------
SYNTHETIC = [
    dict(n_questions=25, n_chains=8, seed=0),
    dict(n_questions=25, n_chains=-12, seed=1, p_missing=0.3),
    dict(n_questions=12, n_chains=20, seed=2, n_classes=2),
    dict(n_questions=20, n_chains=-7, seed=3, p_missing=0.6, n_classes=6),
]


@pytest.mark.parametrize("kwargs", SYNTHETIC, ids=lambda k: f"seed{k['seed']}")
def test_sweep_matches_reference_on_synthetic_sets(kwargs):
    ts = synthetic_trace_set(mean_tokens=40, **kwargs)
    for fam in families():
        assert_same(fam.replay(ts), run_reference(fam, ts))


def test_sweep_matches_reference_with_subset_of_questions():
    ts = synthetic_trace_set(10, -6, mean_tokens=30, seed=5)
    idx = np.array([7, 2, 2, 0])
    for fam in families(window=8, warmup=2):
        fast, ref = fam.replay(ts), run_reference(fam, ts, indices=idx)
        for name in ("answer", "abstained", "tokens", "latency", "chains"):
            np.testing.assert_array_equal(getattr(fast, name)[idx], getattr(ref, name))


def test_deepconf_default_window_longer_than_chains_matches_reference():
    ts = synthetic_trace_set(8, 20, mean_tokens=60, seed=9)
    fam = DeepConfOnline(warmup=16)  # window 2048 > every chain: running means throughout
    assert_same(fam.replay(ts), run_reference(fam, ts))


_chain = st.tuples(
    st.integers(0, 7),  # n_tokens, zero included
    st.integers(-1, 3),  # answer class
    st.one_of(st.none(), st.lists(st.sampled_from([0.5, 1.0, 1.5, 2.0, float("nan"), None]), min_size=0, max_size=8)),
)


def _fit_conf(chain):
    n, cls, conf = chain
    if conf is None:
        return (n, cls, None)
    return (n, cls, (conf * 8)[:n])  # the right length (NaN and null entries stand for missing values)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(_chain.map(_fit_conf), min_size=0, max_size=9), min_size=1, max_size=5),
    st.integers(1, 4),
    st.integers(1, 4),
)
def test_sweep_matches_reference_on_generated_sets(questions, window, warmup):
    """Zero-length chains, questions without chains, ties in lengths, votes and confidences."""
    ts = make_set(questions)
    for fam in families(window=window, warmup=warmup):
        assert_same(fam.replay(ts), run_reference(fam, ts))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12])
def test_sweep_matches_reference_on_larger_sets(seed):
    ts = synthetic_trace_set(80, -40, mean_tokens=150, seed=seed, p_missing=0.1)
    for fam in families(window=64, warmup=16):
        assert_same(fam.replay(ts), run_reference(fam, ts))


# --- grids, settings, registry -------------------------------------------------------------
def test_grids_settings_and_registry():
    from stopwise.policies.registry import family_names, get_family

    assert MajorityVote().grid.tolist() == [64, 32, 16, 8, 4, 2, 1]
    assert MajorityVote(max_n=12).grid.tolist() == [12, 8, 4, 2, 1]
    assert MajorityVote(max_n=12).settings() == {"max_n": 12}
    assert AdaptiveConsistency().grid[0] == 0.999 and AdaptiveConsistency().grid[-1] == 0.6
    assert np.all(np.diff(AdaptiveConsistency().grid) < 0)
    assert DeepConfOnline().grid.tolist() == [0, 10, 30, 50, 70, 90]
    assert DeepConfOnline().settings() == {"window": 2048, "warmup": 16}
    assert VoteMarginAbstain().grid[0] == 0.0
    for name in family_names("multi"):
        fam = make_family(name)
        assert fam.name == name and fam.kind == "multi"
        assert len(fam.grid) >= 2
    assert get_family("deepconf_online", window=16, warmup=4).settings() == {"window": 16, "warmup": 4}


def test_bad_settings_and_index():
    with pytest.raises(ConfigError, match="out of range"):
        MajorityVote().make(7, n_chains=4)
    with pytest.raises(ConfigError, match="window"):
        DeepConfOnline(window=0)
    with pytest.raises(ConfigError, match="warmup"):
        DeepConfOnline(warmup=0)
    with pytest.raises(ConfigError, match="max_n"):
        MajorityVote(max_n=0)


def test_safe_end_equals_full_compute():
    ts = synthetic_trace_set(30, 16, mean_tokens=50, seed=4)
    for fam in (MajorityVote(), VoteMarginAbstain(), DeepConfOnline(window=16, warmup=4)):
        r = fam.replay(ts)
        np.testing.assert_array_equal(r.answer[:, 0], r.answer_full)
        np.testing.assert_array_equal(r.tokens[:, 0], r.tokens_full)
        assert not r.abstained[:, 0].any()
    r = MajorityVote().replay(ts)
    np.testing.assert_array_equal(r.latency[:, 0], r.latency_full)
    assert (r.chains[:, -1] == 1).all()


# --- Adaptive-Consistency -------------------------------------------------------------------------
def test_ac_stop_probability_hand_computation():
    # a = 3, b = 1: int_{1/2}^1 x^3 (1 - x) dx / B(4, 2) = 0.040625 / 0.05 = 13/16
    assert ac_stop_probability(3, 1) == pytest.approx(13 / 16, abs=1e-15)
    # b = 0: 1 - 2^-(a+1)
    for a in range(8):
        assert ac_stop_probability(a, 0) == pytest.approx(1 - 0.5 ** (a + 1), abs=1e-15)
    assert ac_stop_probability(2, 2) == pytest.approx(0.5, abs=1e-15)
    for a, b in [(5, 2), (7, 6), (10, 1)]:
        num = integrate.quad(lambda x: x**a * (1 - x) ** b, 0.5, 1)[0]
        assert ac_stop_probability(a, b) == pytest.approx(num / special.beta(a + 1, b + 1), rel=1e-10)
    # arrays and scalars agree bit for bit
    a = np.array([3, 5, 7]), np.array([1, 2, 6])
    assert ac_stop_probability(*a).tolist() == [float(ac_stop_probability(x, y)) for x, y in zip(*a)]


def test_ac_draws_until_posterior_is_sure():
    # all chains agree: at 0.95 stop once 1 - 2^-(a+1) > 0.95, i.e. a = 4 (0.96875; a = 3 gives 0.9375)
    ts = make_set([[(10, 2)] * 12, [(10, 2), (10, 1)] * 6])
    fam = AdaptiveConsistency()
    k = fam.grid.tolist().index(0.95)
    r = fam.replay(ts)
    assert r.chains[0, k] == 4 and r.answer[0, k] == 2
    assert r.tokens[0, k] == 40 and r.latency[0, k] == 40  # sequential draws
    # alternating answers never convince it: all 12 chains, tie -> the first class to vote
    assert r.chains[1, k] == 12 and r.answer[1, k] == 2
    assert r.latency_full[0] == 10  # full compute draws everything at once


# --- ESC, first finish, majority ----------------------------------------------------------------
def test_esc_stops_at_first_agreeing_window_and_votes_over_all():
    ts = make_set([[(5, 0), (9, 1), (4, 2), (6, -1), (3, 1), (3, 1)]])
    fam = ESC()
    k = fam.grid.tolist().index(2)
    r = fam.replay(ts)
    # windows (0, 1) disagree; (2, -1) agrees on its only answer: stop with 4 chains
    assert r.chains[0, k] == 4
    assert r.answer[0, k] == 0  # vote over 0, 1, 2: three-way tie -> first vote
    assert r.latency[0, k] == 9 + 6 and r.tokens[0, k] == 24


def test_first_finish_tie_goes_to_earliest_chain_and_cuts_later_ones():
    ts = make_set([[(5, 0), (3, 1), (3, 2), (7, 3)]])
    fam = FirstFinish()
    r = fam.replay(ts)
    k = fam.grid.tolist().index(4)
    assert r.answer[0, k] == 1
    assert r.latency[0, k] == 3
    assert r.tokens[0, k] == 3 + 3 + 2 + 2  # chains after the winner are cut before their 3rd token
    assert r.answer[0, -1] == 0 and r.tokens[0, -1] == 5  # n = 1: just the first chain
    assert r.answer_full[0] == 0  # full compute: plain vote over all chains


def test_majority_vote_uses_all_chains_when_n_exceeds_them():
    ts = make_set([[(4, 1), (8, 2), (6, 2)], []])
    r = MajorityVote().replay(ts)
    assert r.answer[0].tolist() == [2, 2, 2, 2, 2, 1, 1]
    assert r.chains[0].tolist() == [3, 3, 3, 3, 3, 2, 1]
    assert r.latency[0].tolist() == [8, 8, 8, 8, 8, 8, 4]
    assert (r.answer[1] == MISSING).all() and (r.tokens[1] == 0).all()


# --- vote margin abstention -------------------------------------------------------------------------
def test_vote_margin_abstains_on_thin_margins():
    ts = make_set([[(3, 0), (3, 0), (3, 0), (3, 1)], [(3, 0), (3, 1)], [(3, -1)]])
    fam = VoteMarginAbstain()
    r = fam.replay(ts)
    grid = fam.grid.tolist()
    # question 0: margin (3 - 1) / 4 = 0.5 -> answers up to threshold 0.5, abstains above
    assert r.abstained[0].tolist() == [g > 0.5 for g in grid]
    assert r.answer[0].tolist() == [MISSING if g > 0.5 else 0 for g in grid]
    # question 1: a tie (margin 0) and question 2: no vote abstain at every positive threshold
    assert r.abstained[1].tolist() == [g > 0 for g in grid] == r.abstained[2].tolist()
    assert r.answer[1, 0] == 0 and r.answer[2, 0] == MISSING
    assert (r.tokens == r.tokens_full[:, None]).all()


# --- DeepConf online ----------------------------------------------------------------------------------
def test_deepconf_supports_explains_what_is_missing():
    few = synthetic_trace_set(5, 8, mean_tokens=20, seed=0)
    msg = DeepConfOnline().supports(few)
    assert msg == "needs at least warmup+1 = 17 chains per question (has at most 8); lower 'warmup' or collect more chains"
    assert DeepConfOnline(warmup=7).supports(few) is None
    no_conf = synthetic_trace_set(5, 32, mean_tokens=20, with_tokens=False, seed=0)
    assert DeepConfOnline().supports(no_conf) == "needs token_confidence"


def test_deepconf_kills_a_chain_when_its_window_drops_below_the_warmup_bar():
    hi, lo = 2.0, 0.25
    warm = [(4, 1, [hi] * 4), (4, 1, [1.0] * 4)]  # scores 2.0 and 1.0
    late = [
        (6, 2, [hi, hi, lo, lo, lo, lo]),  # window 2: means 2, 2, 1.125, 0.25 ... -> killed at token 3 under bar 1.5
        (5, 2, [hi] * 5),
    ]
    ts = make_set([warm + late])
    fam = DeepConfOnline(window=2, warmup=2)
    r = fam.replay(ts)
    k = fam.grid.tolist().index(50)  # bar: median of (2.0, 1.0) = 1.5
    assert r.tokens[0, k] == 4 + 4 + 3 + 5
    assert r.latency[0, k] == 4 + 5
    # votes: class 1 weighs 2.0 + 1.0, class 2 only the survivor's 2.0
    assert r.answer[0, k] == 1
    assert r.tokens[0, 0] == r.tokens_full[0] == 19  # percentile 0: nothing killed
    # full compute: class 2's killed chain now votes with its low score 0.25 (2.25 < 3.0)
    assert r.answer_full[0] == 1
    assert_same(r, run_reference(fam, ts))


def test_deepconf_event_policy_by_hand():
    fam = DeepConfOnline(window=2, warmup=1)
    pol = fam.make(fam.grid.tolist().index(90), n_chains=2)
    assert pol.start() == [Spawn(1)]
    for t, c in enumerate([1.0, 3.0, 3.0], start=1):
        assert pol.on_event(Tokens(0, t, confidence=c)) == []
    assert pol.on_event(Finished(0, 3, 5)) == [Spawn(1)]  # warm-up score: min(1, 2, 3) = 1
    assert pol.on_event(Tokens(1, 1, confidence=1.5)) == []
    assert pol.on_event(Tokens(1, 2, confidence=float("nan"))) == [Stop(1, MISSING), Final(5)]  # mean(1.5, 0) < 1


def test_percentile_rows_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 16))
    for q in (0, 10, 30, 50, 70, 90, 100):
        np.testing.assert_allclose(percentile_rows(x, q), np.percentile(x, q, axis=1), rtol=0, atol=1e-14)
    assert math.isclose(float(percentile_rows(np.array([[1.0, 2.0]]), 50)[0]), 1.5)


def test_deepconf_fits_sets_with_few_and_short_chains():
    from stopwise.policies.registry import get_family
    from stopwise.traces.synthetic import synthetic_trace_set

    import numpy as np

    from stopwise.stats.split import training_mask

    small = synthetic_trace_set(40, 8, mean_tokens=200, seed=1)
    fam = get_family("deepconf_online")
    assert fam.supports(small) is not None  # 16 warm-up chains need 17
    fitted = fam.fit_to(small)
    assert fitted.warmup == 4 and 16 <= fitted.window <= 200 // 4 and fitted.supports(small) is None
    # the window is read off the training role's chains only, and those questions then never calibrate it
    train = training_mask(small.questions.column("question_id").to_pylist())
    lengths = np.asarray(small.column("n_tokens"))[train[np.asarray(small.question_index)]]
    assert train.any() and fitted.window == max(16, int(np.median(lengths) // 8))
    assert np.array_equal(fitted.training_mask(small), train) and fam.training_mask(small) is None
    tiny = synthetic_trace_set(3, 8, mean_tokens=200, seed=1)  # no training-role question: nothing to read
    assert fam.fit_to(tiny).window == fam.window
    big = synthetic_trace_set(3, 20, mean_tokens=40000, seed=1)
    assert fam.fit_to(big) is fam  # DeepConf's own regime: unchanged
