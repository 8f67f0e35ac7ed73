"""Text-only traces of real reasoning models, and grouped multi-sample files.

Two source layouts are read:

``reasoning``
    One chain per record, full text, a reference answer. Recognized layouts:
    MiP-Overthinking (``model_answer`` or ``deepseek-reasoner (question)``,
    ``answer`` holding a GSM8K solution ending in ``#### N`` or a MATH answer,
    optional ``eval_result``) and LLM-Reasoning-Trace-Topology (``full_response``,
    ``ground_truth``, ``is_correct``). MiP MATH files that lack ``question`` take
    it from a sibling ``mip_math_*.json`` whose answers match record by record.

``grouped``
    Several chains per record (lists), through a declared field mapping, as in
    the Qwen2.5-Math evaluation outputs and SkyThought outputs
    (preset ``qwen-eval``: question_id=idx, question=question, reference=gt,
    texts=code, answers=pred, correct=score, reward=pred_score).

Reported correctness flags of the sources are kept as ``correct_reported`` in the
chain metadata; ``correct`` is regraded against the reference with the answer
checker, the same way for every set. Token counts and probe positions come from
the given tokenizer; probes are derived from the text (:mod:`stopwise.traces.textprobes`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from stopwise.errors import ConfigError, TraceFormatError
from stopwise.traces.importers.common import Fields, question_id_from_text, read_json_records
from stopwise.traces.model import Question
from stopwise.traces.textprobes import text_probes


class GroupedMapping(BaseModel):
    """Which source field holds what, for grouped multi-sample records."""

    question_id: str | None = "idx"
    question: str = "question"
    reference: str | None = "gt"
    texts: str = "code"
    answers: str | None = "pred"
    correct: str | None = "score"
    reward: str | None = "pred_score"


PRESETS = {"qwen-eval": GroupedMapping()}


def parse_mapping(spec: str | None) -> GroupedMapping:
    """``None`` or a preset name, or ``key=field,key=field`` overriding the qwen-eval preset."""
    if not spec:
        return PRESETS["qwen-eval"]
    if spec in PRESETS:
        return PRESETS[spec]
    values: dict[str, Any] = {}
    for part in spec.split(","):
        if "=" not in part:
            raise ConfigError(f"bad field mapping '{part}'", hint="use key=field pairs, e.g. texts=responses,answers=preds")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in GroupedMapping.model_fields:
            raise ConfigError(f"unknown mapping key '{k}'", hint=f"valid keys: {', '.join(GroupedMapping.model_fields)}")
        values[k] = v or None
    return PRESETS["qwen-eval"].model_copy(update=values)


def _chain_from_text(qid: str, sid: int, text: str, tokenizer: Any, answer: str | None = None) -> dict[str, Any]:
    from stopwise.answers import extract_answer

    tok = tokenizer.tokenize(text)
    rec: dict[str, Any] = {
        "question_id": qid,
        "sample_id": sid,
        "n_tokens": tok.n_tokens,
        "text": text,
        "answer": answer if answer not in ("", None) else extract_answer(text),
        "finish_reason": None,
    }
    rec.update(text_probes(text, tok))
    return rec


def _sibling_questions(path: Path, n: int, answers: list[str]) -> list[str] | None:
    for sib in sorted(path.parent.glob("mip_math_*.json")):
        if sib == path:
            continue
        try:
            data = json.loads(sib.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if len(data) != n or not all(isinstance(r, dict) and "question" in r for r in data):
            continue
        if [str(r.get("answer")) for r in data] == answers:
            return [r["question"] for r in data]
    return None


def parse_reasoning(paths: list[Path], *, tokenizer: Any) -> tuple[list[Question], list[dict[str, Any]]]:
    from stopwise.answers import gsm8k_reference

    questions: dict[str, Question] = {}
    chains: list[dict[str, Any]] = []
    for path in paths:
        records = list(read_json_records(path))
        if not records:
            raise TraceFormatError("no records", path=str(path))
        first = records[0][1]
        layout = "topology" if "full_response" in first else "mip"
        qtexts: list[str] | None = None
        if layout == "mip" and "question" not in first:
            qtexts = _sibling_questions(path, len(records), [str(r.get("answer")) for _, r in records])
            if qtexts is None:
                raise TraceFormatError(
                    "records have no 'question' and no sibling mip_math_*.json supplies it",
                    path=str(path), line=1, field="question",
                )
        seen: dict[str, int] = {}
        for i, (lineno, obj) in enumerate(records):
            f = Fields(obj, path, lineno)
            if layout == "topology":
                qtext = f.get("problem", str, required=True)
                text = f.get("full_response", str, required=True)
                reference = f.str_or_int("ground_truth", required=True)
                reported = obj.get("is_correct")
            else:
                qtext = qtexts[i] if qtexts is not None else f.get("question", str, required=True)
                key = "model_answer" if "model_answer" in obj else "deepseek-reasoner (question)"
                text = f.get(key, str, required=True)
                raw_ref = f.str_or_int("answer", required=True)
                reference = gsm8k_reference(raw_ref) if "####" in raw_ref else raw_ref
                reported = obj.get("eval_result")
                if reported is not None:
                    reported = str(reported).strip() in ("1", "True", "true")
            qid = question_id_from_text("q", qtext)
            if qid in seen:
                # the same question twice in one file: keep both as separate samples
                seen[qid] += 1
            else:
                seen[qid] = 0
            sid = seen[qid]
            if qid not in questions:
                questions[qid] = Question(qid, qtext, reference)
            rec = _chain_from_text(qid, sid, text, tokenizer)
            meta = {"source_file": path.name, "source_record": lineno}
            if reported is not None:
                meta["correct_reported"] = bool(reported)
            rec["metadata"] = meta
            chains.append(rec)
    return list(questions.values()), chains


def parse_grouped(paths: list[Path], *, tokenizer: Any, mapping: GroupedMapping) -> tuple[list[Question], list[dict[str, Any]]]:
    questions: dict[str, Question] = {}
    chains: list[dict[str, Any]] = []
    for path in paths:
        for lineno, obj in read_json_records(path):
            f = Fields(obj, path, lineno)
            qtext = f.get(mapping.question, str, required=True)
            qid = f.str_or_int(mapping.question_id) if mapping.question_id else None
            qid = question_id_from_text("q", qtext) if qid is None else f"{Path(path).stem}-{qid}"
            if qid in questions:
                raise f.error(mapping.question_id or mapping.question, f"duplicate question {qid!r}")
            reference = f.str_or_int(mapping.reference) if mapping.reference else None
            texts = f.listish(mapping.texts, required=True)
            answers = f.listish(mapping.answers) if mapping.answers else None
            correct = f.listish(mapping.correct) if mapping.correct else None
            reward = f.listish(mapping.reward) if mapping.reward else None
            for name, lst in ((mapping.answers, answers), (mapping.correct, correct), (mapping.reward, reward)):
                if lst is not None and len(lst) != len(texts):
                    raise f.error(name or "?", f"has {len(lst)} entries for {len(texts)} texts ('{mapping.texts}')")
            questions[qid] = Question(qid, qtext, reference)
            for sid, text in enumerate(texts):
                if not isinstance(text, str):
                    raise f.error(f"{mapping.texts}[{sid}]", f"expected a string, got {type(text).__name__}")
                ans = None
                if answers is not None and answers[sid] is not None:
                    ans = str(answers[sid])
                rec = _chain_from_text(qid, sid, text, tokenizer, answer=ans)
                meta: dict[str, Any] = {"source_file": Path(path).name, "source_record": lineno}
                if correct is not None and correct[sid] is not None:
                    meta["correct_reported"] = bool(correct[sid])
                if reward is not None and reward[sid] is not None:
                    r = reward[sid]
                    while isinstance(r, list) and r:
                        r = r[-1]
                    if not isinstance(r, (int, float)) or isinstance(r, bool):
                        raise f.error(f"{mapping.reward}[{sid}]", "expected a number or a list of numbers")
                    rec["reward"] = float(r)
                rec["metadata"] = meta
                chains.append(rec)
    return list(questions.values()), chains
