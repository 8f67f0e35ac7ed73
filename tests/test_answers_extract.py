"""Answer extraction on realistic model outputs and reasoning snippets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stopwise.answers import Candidate, extract_answer, find_candidates, gsm8k_reference
from stopwise.errors import StopwiseError, TraceFormatError

REAL = Path("/work/shared/data/reasoning/mip_gsm8k_QwQ.json")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"So the probability is \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"First \boxed{3}, then corrected: \boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
        (r"The set is $\boxed{\{1, 2\}}$.", r"\{1, 2\}"),
        (r"Answer: \fbox{7}", "7"),
        (r"Thus the answer is \boxed{\text{(B)}}.", "(B)"),
        ("The answer is 42.", "42"),
        ("I think the answer is $18. Let me double-check that.", "18"),
        ("So the answer is $18$.", "18"),
        ("So the answer is 540 meters per week.", "540"),
        ("Therefore, the final answer is:\n\\[\n\\boxed{540}\n\\]", "540"),
        ("**Answer:** 17", "17"),
        ("**Final Answer:** $x = 5$", "x = 5"),
        ("**Answer:** Terry spends **\\$75.00** on yogurt over 30 days.", "75.00"),
        ("So 319 is the correct answer.", "319"),
        ("the answer is \\(\\frac{1}{2}\\).", r"\frac{1}{2}"),
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72"),
        ("He paid 1,234 dollars.", "1234"),
        ("The temperature fell to -5 degrees.", "-5"),
        ("Each gets 3/4 of a pie.", "3/4"),
        ("16-11", "11"),
        ("I am not sure how to do this.", None),
        ("", None),
        ("I think my answer is correct.", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Comparing all options, the answer is (B).", "B"),
        ("So the answer is B, since the others fail.", "B"),
        ("Answer: C", "C"),
        ("**Answer:** (D) 12", "D"),
        (r"\boxed{A}", "A"),
        ("the answer is b", "B"),
        ("Option (C) is the only one left.", "C"),
        ("No idea at all.", None),
        ("The answer is (E).", None),  # not a valid choice
    ],
)
def test_extract_multiple_choice(text: str, expected: str | None) -> None:
    assert extract_answer(text, choices="ABCD") == expected


def test_think_block_skipped_when_summary_has_answer() -> None:
    text = "<think>Maybe 5? The answer is 5.</think>\nAfter checking, the result is \\boxed{6}."
    assert extract_answer(text) == "6"


def test_think_block_used_when_summary_is_empty_or_answerless() -> None:
    assert extract_answer("<think>So the answer is 5.</think>\n") == "5"
    assert extract_answer("<think>So the answer is 5.</think>\nNo idea, sorry.") == "5"


def test_gsm8k_reference() -> None:
    assert gsm8k_reference("He sprints 3*3=<<3*3=9>>9 times\nSo he runs 9*60=540 meters\n#### 540") == "540"
    assert gsm8k_reference("...\n#### 1,200 ") == "1200"
    with pytest.raises(TraceFormatError, match="####"):
        gsm8k_reference("no marker here")
    assert issubclass(TraceFormatError, StopwiseError)


def _spans(text: str) -> list[tuple[str, str]]:
    return [(c.answer, text[c.start : c.end]) for c in find_candidates(text)]


def test_find_candidates_reasoning_snippet() -> None:
    text = (
        "He does 3 sprints 3 times a week, so 3*3 = 9 sprints. Each is 60 meters, "
        "so the total is 9*60 = 540. So the answer is 540.\n\n"
        "Wait, let me double-check. 180*3 = 540. Yes.\n\n"
        "**Final Answer**\nJames runs \\boxed{540} meters a week.\n</think>\n\n"
        "James runs \\boxed{540} meters."
    )
    assert _spans(text) == [
        ("540", "the answer is 540"),
        ("540", "**Final Answer**\nJames runs \\boxed{540}"),
        ("540", "\\boxed{540}"),
    ]


def test_find_candidates_ignores_arithmetic_and_chatter() -> None:
    text = (
        "3*3 = 9. So the total is 9. Then = 9 again. I think my answer is correct. "
        "The answer should be in minutes. The answer is not 5. That's the answer."
    )
    assert find_candidates(text) == []


def test_find_candidates_statement_forms() -> None:
    text = (
        "Maybe the answer is 5? Hmm. So the answer should be $18. "
        "Therefore, 319 is the correct answer. Answer: 7\n"
        "Final answer: \\(\\frac{3}{4}\\)"
    )
    assert [c.answer for c in find_candidates(text)] == ["5", "18", "319", "7", r"\frac{3}{4}"]


def test_candidates_are_ordered_and_disjoint() -> None:
    text = "the answer is \\boxed{2}. Then the final answer is: \\[\\boxed{3}\\] and \\boxed{4}"
    cands = find_candidates(text)
    assert [c.answer for c in cands] == ["2", "3", "4"]
    assert all(isinstance(c, Candidate) for c in cands)
    assert all(a.end <= b.start for a, b in zip(cands, cands[1:]))
    with pytest.raises(AttributeError):
        cands[0].answer = "x"  # type: ignore[misc]


@pytest.mark.skipif(not REAL.exists(), reason="shared reasoning data not present")
def test_real_chains_mostly_yield_candidates() -> None:
    rows = json.loads(REAL.read_text())[:50]
    with_cands = 0
    for row in rows:
        text = row["model_answer"]
        cands = find_candidates(text)
        with_cands += bool(cands)
        for c in cands:
            assert 0 <= c.start < c.end <= len(text)
            assert c.answer and len(c.answer) <= 80
        assert extract_answer(text) is not None
    assert with_cands / len(rows) >= 0.9
    agree = sum(extract_answer(r["model_answer"]) == gsm8k_reference(r["answer"]) for r in rows)
    assert agree / len(rows) >= 0.8
