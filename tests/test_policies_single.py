"""Single-chain families: the vectorized sweep equals the reference driver, exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stopwise.errors import ConfigError, UnknownNameError
from stopwise.policies.base import Family, Final, Finished, Probe, ProbeResult, Spawn, Stop, Tokens
from stopwise.policies.registry import FAMILIES, FAMILY_KINDS, family_class, family_names, get_family
from stopwise.policies.single import AnswerConvergence, probe_arrays
from stopwise.replay import run_reference
from stopwise.traces.model import Provenance, TraceSet, trace_set_from_columns
from stopwise.traces.schema import CHAIN_COLUMNS, QUESTION_SCHEMA
from stopwise.traces.synthetic import synthetic_trace_set

from replay_asserts import assert_same_result as assert_same, make_family

SINGLE = family_names("single")


def chains_ts(chains: list[dict]) -> TraceSet:
    """One question per chain; dict keys: n_tokens, answer, probes [(pos, cls, lp, cost, cue)], null (columns)."""
    q_rows = {f.name: [] for f in QUESTION_SCHEMA}
    rows: dict[str, list] = {c: [] for c in CHAIN_COLUMNS}
    for i, c in enumerate(chains):
        qid = f"q{i // 2}"  # two chains a question
        if not q_rows["question_id"] or q_rows["question_id"][-1] != qid:
            for k, v in dict(question_id=qid, question=None, reference=None, reference_class=i % 3 - 1, n_classes=3, class_answers=None, metadata=None).items():
                q_rows[k].append(v)
        rec = {k: None for k in CHAIN_COLUMNS}
        rec.update(question_id=qid, sample_id=i % 2, n_tokens=c["n_tokens"], answer_class=c["answer"], finish_reason="stop")
        probes = c["probes"]
        if probes is not None:
            rec["probe_position"] = [p[0] for p in probes]
            rec["probe_class"] = [p[1] for p in probes]
            rec["probe_logprob"] = [p[2] for p in probes]
            rec["probe_cost"] = [p[3] for p in probes]
            rec["probe_cue"] = [p[4] for p in probes]
            for col in c.get("null", ()):
                rec[col] = None
        for k in CHAIN_COLUMNS:
            rows[k].append(rec[k])
    return trace_set_from_columns("hyp", q_rows, rows, Provenance(source="test"))


# --- vectorized == reference ----------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", SINGLE)
def test_replay_matches_reference_synthetic(name: str, seed: int) -> None:
    ts = synthetic_trace_set(8, -3, mean_tokens=150, probe_every=16, seed=seed)
    fam = make_family(name)
    assert_same(fam.replay(ts), run_reference(fam, ts))


@pytest.mark.parametrize("name", SINGLE)
def test_replay_matches_reference_long_chains(name: str) -> None:
    # long enough that the large token budgets and the deep grids all bite
    ts = synthetic_trace_set(2, 2, mean_tokens=1500, probe_every=64, seed=5)
    fam = make_family(name)
    assert_same(fam.replay(ts), run_reference(fam, ts))


probe_st = st.tuples(
    st.integers(0, 25),  # position (sorted later, clipped to n_tokens)
    st.integers(-1, 2),  # class
    st.one_of(st.just(math.nan), st.floats(-3.0, 0.0)),  # logprob
    st.integers(0, 6),  # cost
    st.sampled_from(["schedule", "wait", None]),  # cue
)
chain_st = st.fixed_dictionaries(
    {
        "n_tokens": st.integers(0, 25),
        "answer": st.integers(-1, 2),
        "probes": st.one_of(st.none(), st.lists(probe_st, max_size=8)),
        "null": st.lists(st.sampled_from(["probe_class", "probe_logprob", "probe_cost", "probe_cue"]), max_size=2, unique=True),
    }
)


def _normalize(c: dict) -> dict:
    if c["probes"] is not None:
        c = dict(c, probes=sorted(((min(p[0], c["n_tokens"]),) + p[1:] for p in c["probes"]), key=lambda p: p[0]))
    return c


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains=st.lists(chain_st, min_size=1, max_size=6), cues=st.sampled_from([None, ("wait",), ("schedule", "wait")]))
def test_replay_matches_reference_random(chains: list[dict], cues) -> None:  # noqa: ANN001
    ts = chains_ts([_normalize(c) for c in chains])
    for name in SINGLE:
        fam = make_family(name, cues=cues)
        assert_same(fam.replay(ts), run_reference(fam, ts))


def test_no_probe_columns_runs_to_the_end() -> None:
    ts = chains_ts([{"n_tokens": 7, "answer": 1, "probes": None}, {"n_tokens": 3, "answer": -1, "probes": None}])
    for name in SINGLE:
        fam = make_family(name)
        res = fam.replay(ts)
        assert_same(res, run_reference(fam, ts))
        assert (res.tokens == np.array([[7], [3]])).all() and (res.probe_tokens == 0).all()
        assert fam.supports(ts) is not None


# --- family-specific behaviour ------------------------------------------------------------
def test_token_budget_tokens_non_increasing_along_grid() -> None:
    ts = synthetic_trace_set(30, 3, mean_tokens=400, seed=4)
    res = get_family("token_budget").replay(ts)
    # a smaller budget stops at an earlier or equal probe, chain by chain
    assert (np.diff(res.tokens, axis=1) <= 0).all()
    assert (res.tokens[:, 0] == res.tokens_full).all()  # 32768 exceeds every chain
    assert np.all(np.diff(get_family("token_budget").grid) < 0)


def test_dynasor_rule_is_the_papers_not_the_released_bug() -> None:
    # The released should_early_exit stops whenever the latest probe has no
    # hesitation word. Here no probe has text (so none has a hesitation word),
    # yet the answers never repeat: the paper's rule must never stop.
    probes = [(8 * (i + 1), cls, 0.0, 1, "schedule") for i, cls in enumerate([0, 1, 2, 0, 1, 2, 0, 1])]
    ts = chains_ts([{"n_tokens": 80, "answer": 1, "probes": probes}])
    fam = get_family("answer_convergence")
    for res in (fam.replay(ts), run_reference(fam, ts)):
        assert (res.tokens == 80).all()
        assert (res.answer == 1).all()
        assert (res.probe_tokens == 8).all()
    # a missing answer breaks a run: 2, -1, 2 is not two in a row
    ts = chains_ts([{"n_tokens": 40, "answer": 2, "probes": [(10, 2, 0.0, 1, None), (20, -1, 0.0, 1, None), (30, 2, 0.0, 1, None)]}])
    k2 = list(fam.grid).index(2)
    assert fam.replay(ts).tokens[0, k2] == 40


def test_run_lengths() -> None:
    ts = chains_ts(
        [
            {"n_tokens": 9, "answer": 1, "probes": [(p, c, 0.0, 0, None) for p, c in zip(range(1, 8), [1, 1, -1, 1, 1, 1, 2])]},
            {"n_tokens": 9, "answer": 1, "probes": [(1, 2, 0.0, 0, None), (2, 2, 0.0, 0, None)]},
        ]
    )
    assert AnswerConvergence.run_lengths(probe_arrays(ts)).tolist() == [1, 2, 0, 1, 2, 3, 1, 1, 2]


def test_probe_confidence_supports_checks_nan_not_null() -> None:
    nan_ts = chains_ts([{"n_tokens": 9, "answer": 1, "probes": [(3, 1, math.nan, 0, None)]}])
    assert nan_ts.has("probe_logprob")  # present, but NaN everywhere
    reason = get_family("probe_confidence").supports(nan_ts)
    assert reason is not None and "NaN" in reason
    assert get_family("answer_convergence").supports(nan_ts) is None
    assert get_family("probe_confidence").supports(synthetic_trace_set(2, 2, seed=0)) is None


def test_policy_events_directly() -> None:
    pol = get_family("probe_confidence").make(list(get_family("probe_confidence").grid).index(0.9))
    assert pol.start() == [Spawn(1)]
    assert pol.on_event(Tokens(0, 1)) == [Probe(0, None)]
    assert pol.on_event(ProbeResult(0, 1, 2, math.log(0.5), 3)) == []
    assert pol.on_event(ProbeResult(0, 2, 2, math.log(0.95), 3)) == [Stop(0, 2), Final(2)]
    assert get_family("token_budget").make(0).on_event(Tokens(0, 5)) == []
    assert get_family("first_candidate").make(0).on_event(Finished(0, 9, 4)) == [Final(4)]
    wait_only = get_family("first_candidate", cues=["wait"]).make(6)
    assert wait_only.on_event(ProbeResult(0, 3, 1, 0.0, 0, "schedule")) == []
    assert wait_only.on_event(ProbeResult(0, 3, 1, 0.0, 0, "wait")) == [Stop(0, 1), Final(1)]


def test_full_is_each_chain_to_its_end() -> None:
    ts = synthetic_trace_set(4, -3, seed=7)
    answer, tokens, probe, latency, chains = get_family("answer_convergence").full(ts)
    np.testing.assert_array_equal(answer, ts.column("answer_class"))
    np.testing.assert_array_equal(tokens, ts.column("n_tokens"))
    np.testing.assert_array_equal(latency, tokens)
    assert (probe == 0).all() and (chains == 1).all()
    assert answer.dtype == np.int32 and tokens.dtype == np.int64 and chains.dtype == np.int32


def test_grids_settings_and_make_bounds() -> None:
    for name in SINGLE:
        fam = make_family(name)
        assert isinstance(fam, Family) and fam.kind == "single" and fam.name == name
        assert len(fam.grid) >= 5
        if name not in ("learned_exit", "entropy_monitor"):
            assert fam.settings() == {"cues": None}
        with pytest.raises(ConfigError, match="out of range"):
            fam.make(len(fam.grid))
    assert get_family("token_budget", cues=["wait", "blank_line"]).settings() == {"cues": ["blank_line", "wait"]}
    for name in ("first_candidate", "answer_convergence"):
        assert np.all(np.diff(make_family(name).grid) < 0)  # fewer probes needed = more aggressive
    assert np.all(np.diff(get_family("probe_confidence").grid) < 0)


# --- registry ---------------------------------------------------------------------------------
def test_registry_names_and_errors() -> None:
    assert set(family_names()) == set(FAMILIES) == set(FAMILY_KINDS)
    assert family_names("single") == ["token_budget", "first_candidate", "answer_convergence", "probe_confidence", "learned_exit", "entropy_monitor"]
    assert set(family_names("multi")) == {
        "majority_vote",
        "adaptive_consistency",
        "eprocess_vote",
        "combined",
        "esc",
        "first_finish",
        "deepconf_online",
        "vote_margin_abstain",
    }
    with pytest.raises(UnknownNameError, match="did you mean 'token_budget'"):
        get_family("token_budgt")
    with pytest.raises(UnknownNameError, match="family kind"):
        family_names("double")
    with pytest.raises(ConfigError, match="bad settings for policy family 'token_budget'"):
        get_family("token_budget", threshold=3)


def test_registry_kinds_match_classes() -> None:
    for name in FAMILIES:
        try:
            cls = family_class(name)
        except ImportError:
            continue  # multi-chain module not written yet
        assert cls.name == name
        assert cls.kind == FAMILY_KINDS[name]
