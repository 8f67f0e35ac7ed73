"""The bundled logprob corpora collected with the embedded model (GSM8K and reasoning-gym
chain_sum) load, carry what a collected set must carry, and feed every token-level and
probe-based family in bench."""

import numpy as np
import pytest

from stopwise.evaluation.bench import applicable_families
from stopwise.data import bundled_path
from stopwise.traces.io import read_trace_set


@pytest.fixture(scope="module")
def corpus():
    return read_trace_set(bundled_path("gsm8k_qwen05"))


@pytest.fixture(scope="module", params=["gsm8k_qwen05", "chain_sum_qwen05"])
def collected(request):
    return read_trace_set(bundled_path(request.param))


def test_collected_corpus_has_logprobs_probes_and_provenance(collected):
    corpus = collected
    for col in ("token_logprobs", "top_logprobs", "top_tokens", "entropy", "token_confidence", "probe_position", "probe_cost", "correct"):
        assert corpus.has(col), col
    prov = corpus.provenance
    assert prov.model_sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert "temperature 1" in prov.logprob_convention and prov.forcing_string
    assert prov.sampling["temperature"] == 0.7 and "collect" in prov.command
    assert int(np.min(corpus.chain_counts)) >= 4
    _, lp = corpus.list_column("token_logprobs")
    assert np.all(lp <= 1e-6)


def test_gsm8k_corpus_is_complete_as_the_issue_asks(corpus):
    """600 GSM8K test questions x 4 chains, 16 on the first 64 (in the dataset's order), stored at 7 mantissa bits
    with the lossless set's content hash, and the collection's run log in the manifest."""
    assert corpus.n_questions == 600 and corpus.n_chains == 600 * 4 + 64 * 12
    counts = corpus.chain_counts
    assert np.all(counts[:64] == 16) and np.all(counts[64:] == 4)
    fp = corpus.provenance.float_precision
    assert fp["mantissa_bits"] == 7 and len(fp["lossless_content_hash"]) == 64 and fp["lossless_content_hash"] != corpus.content_hash
    assert corpus.provenance.collect["chains_first"] == [64, 16] and corpus.provenance.collection_runs["chains"] > 0
    assert "600 of 600 questions complete" in corpus.provenance.notes


def test_corpus_feeds_token_level_and_probe_based_families(collected):
    corpus = collected
    fams, skipped = applicable_families(corpus, None, "disagreement")
    names = {f.name for f in fams}
    assert {"probe_confidence", "answer_convergence", "deepconf_online", "token_budget", "majority_vote", "adaptive_consistency"} <= names, skipped
    for fam in fams:
        res = fam.replay(corpus)
        assert res.answer.shape[1] == len(fam.grid)
        assert np.all(res.tokens <= res.tokens_full[:, None] + 0)  # early stopping never adds generated tokens


def test_cascade_pair_and_direct_set_share_the_questions(corpus):
    """The 1.5B set and the direct-answer set were collected on questions of the 0.5B corpus, by their own models."""
    from stopwise.data import bundled_cascade_pairs

    large = read_trace_set(bundled_path("gsm8k_qwen15"))
    direct = read_trace_set(bundled_path("gsm8k_qwen05_direct"))
    q05 = set(corpus.questions.column("question_id").to_pylist())
    for ts in (large, direct):
        ids = set(ts.questions.column("question_id").to_pylist())
        assert len(ids) >= 100 and ids <= q05, ts.name
        assert int(np.max(ts.chain_counts)) == 1
    assert large.provenance.model_sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert direct.provenance.model_sha256 == corpus.provenance.model_sha256
    assert direct.provenance.collect["direct"] is True and direct.provenance.sampling["temperature"] == 0.0
    assert int(np.max(direct.column("n_tokens"))) <= 16
    assert {(s.name, lg.name) for s, lg in bundled_cascade_pairs()} == {("gsm8k_qwen05", "gsm8k_qwen15"),
                                                                         ("gsm8k_qwen05_direct", "gsm8k_qwen05")}


def test_small_to_large_cascade_on_the_bundled_pair(corpus):
    from stopwise.rules.routing import pair_trace_sets, trace_cascade

    pair = pair_trace_sets(corpus, read_trace_set(bundled_path("gsm8k_qwen15")), chains=4)  # the first 64 questions have 16
    assert pair.chains == 4 and len(pair.question_ids) >= 100
    assert pair.strong_ok.mean() > pair.weak_ok.mean(), "the 1.5B model is the stronger one"
    r = trace_cascade(pair, score="vote_margin", epsilon=0.1)
    assert r["n_calibration"] + r["n_test"] == len(pair.question_ids)
    assert r["accuracy_oracle"] >= r["accuracy_strong"] and 0 <= r["escalated"] <= 1
    if r["certified"]:
        assert r["test_risk"] <= 0.1 + 0.1  # held-out loss near the certified level (small test half)
