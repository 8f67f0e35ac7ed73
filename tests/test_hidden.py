"""Hidden states at probe positions (transformers on the CPU, SmolLM2 as the fast model): the sidecar, causality,
resumption, and the comparison against logprob features. The real run uses the embedded 0.5B model."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import _need
from stopwise.data import bundled_path
from stopwise.errors import ConfigError
from stopwise.traces import read_trace_set


@pytest.fixture(scope="module")
def small_set():
    from stopwise.rules.routing import subset_trace_set

    ts = read_trace_set(bundled_path("gsm8k_qwen05"))
    return subset_trace_set(ts, ts.questions.column("question_id").to_pylist()[:4], 2)


@pytest.fixture(scope="module")
def model(smollm2_path):
    _need("torch", "torch (extra [hidden])")
    _need("transformers", "transformers (extra [hidden])")
    from stopwise.backends.transformers_hidden import HiddenStateModel

    return HiddenStateModel(smollm2_path, threads=2)


def test_hidden_state_does_not_look_ahead(model):
    prompt, chain = "Question: 2+2?\n", "We add two and two. The answer is 4."
    cut = chain.index(" The")  # a token boundary in both strings
    full = model.hidden_at(prompt, chain, [0, cut, len(chain)])
    prefix = model.hidden_at(prompt, chain[:cut], [cut])
    assert full.shape == (3, model.hidden_size) and full.dtype == np.float16
    np.testing.assert_allclose(full[1].astype(np.float32), prefix[0].astype(np.float32), atol=2e-2, rtol=2e-2)
    assert not np.allclose(full[1], full[2]), "later text gives another state"
    # offset 0 is the prompt's last token, whatever the chain
    np.testing.assert_allclose(full[0].astype(np.float32), model.hidden_at(prompt, "Other text.", [0])[0].astype(np.float32),
                               atol=2e-2, rtol=2e-2)


def test_collect_load_resume_and_compare(tmp_path, small_set, smollm2_path, model):
    from stopwise.hidden import collect_hidden, hidden_comparison, load_hidden

    out = tmp_path / "hidden"
    collect_hidden(small_set, smollm2_path, out, chains=2, loaded=model)
    manifest, hidden = load_hidden(out)
    assert manifest["source_content_hash"] == small_set.content_hash and manifest["chains"] == 2
    assert len(hidden) == small_set.n_chains
    offsets, positions = small_set.list_column("probe_position")
    qids = small_set.questions.column("question_id").to_pylist()
    for j in range(small_set.n_chains):
        key = (qids[small_set.question_index[j]], int(small_set.column("sample_id")[j]))
        pos, vec = hidden[key]
        assert pos.tolist() == positions[offsets[j]:offsets[j + 1]].tolist()
        assert vec.shape == (len(pos), manifest["hidden_size"]) and np.isfinite(vec.astype(np.float32)).all()
    chunks = sorted((out / "chunks").glob("*.parquet"))
    collect_hidden(small_set, smollm2_path, out, chains=2, loaded=model)  # resume: nothing left to do
    assert sorted((out / "chunks").glob("*.parquet")) == chunks
    with pytest.raises(ConfigError, match="another set or chain count"):
        collect_hidden(small_set, smollm2_path, out, chains=1)
    r = hidden_comparison(small_set, out, pca=4)
    assert set(r["results"]) == {"logprob", "hidden", "both"} and r["questions"] == 4
    assert all(0.0 <= v["auroc"] <= 1.0 and v["log_loss"] > 0 for v in r["results"].values())
