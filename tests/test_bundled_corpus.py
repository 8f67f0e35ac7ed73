"""The bundled logprob corpus collected with the embedded model loads, carries what a
collected set must carry, and feeds every token-level and probe-based family in bench."""

import numpy as np
import pytest

from stopwise.bench import applicable_families
from stopwise.data import bundled_path
from stopwise.traces.io import read_trace_set


@pytest.fixture(scope="module")
def corpus():
    return read_trace_set(bundled_path("gsm8k_qwen05"))


def test_collected_corpus_has_logprobs_probes_and_provenance(corpus):
    for col in ("token_logprobs", "top_logprobs", "top_tokens", "entropy", "token_confidence", "probe_position", "probe_cost", "correct"):
        assert corpus.has(col), col
    prov = corpus.provenance
    assert prov.model_sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert "temperature 1" in prov.logprob_convention and prov.forcing_string
    assert prov.sampling["temperature"] == 0.7 and "collect" in prov.command
    assert int(np.min(corpus.chain_counts)) >= 4
    _, lp = corpus.list_column("token_logprobs")
    assert np.all(lp <= 1e-6)


def test_corpus_feeds_token_level_and_probe_based_families(corpus):
    fams, skipped = applicable_families(corpus, None, "disagreement")
    names = {f.name for f in fams}
    assert {"probe_confidence", "answer_convergence", "deepconf_online", "token_budget", "majority_vote", "adaptive_consistency"} <= names, skipped
    for fam in fams:
        res = fam.replay(corpus)
        assert res.answer.shape[1] == len(fam.grid)
        assert np.all(res.tokens <= res.tokens_full[:, None] + 0)  # early stopping never adds generated tokens
