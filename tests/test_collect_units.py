"""Collection internals without a model: chain records from fake chains (tokens given), seeding checks."""

import json

import pytest

from stopwise.collect import (
    CollectConfig,
    _Live,
    _open_state,
    _record,
    questions_fingerprint,
    read_chunks,
    seed_chunks,
)
from stopwise.datasets import DatasetItem, load_dataset
from stopwise.errors import ConfigError
from stopwise.traces.io import write_trace_set
from stopwise.traces.model import Provenance, Question, build_trace_set


def _fake_chain(raws: list[bytes]) -> _Live:
    n = len(raws)
    return _Live(DatasetItem("q1", "What is 40 + 2?", "42", {}, None), 0, 7,
                 [r.decode("utf-8", errors="replace") for r in raws], raws,
                 [-0.1] * n, [[-0.1]] * n, [["x"]] * n, [0.5] * n, [0.1] * n, [], set(), "stop")


def test_first_candidate_position_counts_characters_split_over_tokens_once():
    """Five '≈' each split over two tokens, then the answer: the position is that of the token that
    ends the answer (counting each split character twice, once per token, put it five characters early)."""
    raws = [b"About"] + [b" \xe2\x89", b"\x88"] * 5 + [b" 40", b" plus", b" 2", b".", b" The", b" answer", b" is", b" 42", b".", b" Done"]
    cfg = CollectConfig(dataset="gsm8k", model="smollm2", questions=1, chains=1, max_tokens=64)
    rec = _record(_fake_chain(raws), cfg)
    assert rec["text"] == "About" + " ≈" * 5 + " 40 plus 2. The answer is 42. Done"
    assert rec["answer"] == "42"
    assert rec["first_candidate_position"] == raws.index(b" 42") + 1


def test_seeding_refuses_a_set_whose_question_differs_and_regrades_what_it_seeds(tmp_path):
    """A seed set (same settings) whose question of an id has another text would join its chains to
    another question: refused. Accepted chains lose their stored `correct` where the dataset has no
    grader of its own (the assembly judges them by the reference, as every chain collected here)."""
    qfile = tmp_path / "q.jsonl"
    qfile.write_text(json.dumps({"id": "a", "question": "What is 2+2?", "answer": 4}) + "\n")
    cfg = CollectConfig(dataset=f"jsonl:{qfile}", model="http://127.0.0.1:9", questions=1, chains=1, max_tokens=8)
    items = load_dataset(cfg.dataset).items
    chain = {"question_id": "a", "sample_id": 0, "text": "so 4", "answer": "4", "correct": False, "n_tokens": 2,
             "tokens": ["so", " 4"], "finish_reason": "stop"}

    def seed_set(question: str):
        qs = [Question("a", question, "4")]
        ts = build_trace_set("seed", qs, [dict(chain)], Provenance(source="test", collect=cfg.identity()))
        return write_trace_set(ts, tmp_path / f"seed-{len(question)}", overwrite=True)

    state = _open_state(tmp_path / "c", cfg, "stopwise collect", questions_fingerprint(items))
    with pytest.raises(ConfigError, match="holds question 'a' with another text or reference"):
        seed_chunks(state, seed_set("What is 2+3?!"), cfg, items)
    assert seed_chunks(state, seed_set("What is 2+2?"), cfg, items) == 1
    assert "correct" not in read_chunks(state)[0]
