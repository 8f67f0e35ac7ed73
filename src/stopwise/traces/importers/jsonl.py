"""The stopwise JSONL format: one chain per line.

Fields (only ``question_id``, ``sample_id`` and one of ``text``/``answer`` are required)::

    question_id   str|int   id of the question (chains of one question share it)
    sample_id     int >= 0  index of the chain among its question's samples (unique per question)
    question      str       question text
    reference     str       reference answer (enables correctness and accuracy risks)
    prompt        str       the prompt sent to the model
    model         str       model name
    sampling      object    temperature, top_p, seed...
    finish_reason str       "stop", "length", ...
    text          str       generated text
    answer        str       final answer (extracted from ``text`` when absent)
    correct       bool      correctness (computed from ``reference`` when absent)
    reward        number    outcome reward score
    n_tokens      int       generated tokens (else len(logprobs.tokens), else counted)
    logprobs      object    OpenAI completions shape: {tokens: [str], token_logprobs: [num],
                            top_logprobs: [{token: logprob}]}; optional entropy: [num] and
                            token_confidence: [num] lists of the same length
    probes        [object]  {position: int, answer: str|null, text: str, logprob: num,
                            cost: int, cue: str}, sorted by position

Unknown fields are kept as per-chain metadata.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from stopwise.errors import TraceFormatError
from stopwise.traces.importers.common import Fields, read_jsonl
from stopwise.traces.model import Question

KNOWN = {
    "question_id", "sample_id", "question", "reference", "prompt", "model", "sampling",
    "finish_reason", "text", "answer", "correct", "reward", "n_tokens", "logprobs", "probes",
}


def _num_list(f: Fields, field: str, v: Any) -> list[float]:
    if not isinstance(v, list):
        raise f.error(field, f"expected a list of numbers, got {type(v).__name__}")
    out = []
    for i, x in enumerate(v):
        if x is None:
            out.append(math.nan)
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            out.append(float(x))
        else:
            raise f.error(f"{field}[{i}]", f"expected a number, got {type(x).__name__}")
    return out


def parse_stopwise_jsonl(paths: list[Path], *, tokenizer: Any = None) -> tuple[list[Question], list[dict[str, Any]]]:
    """Parse stopwise JSONL files into question records and chain records.

    Raises :class:`TraceFormatError` naming file, line and field for the first bad value.
    """
    from stopwise.answers import extract_answer

    questions: dict[str, Question] = {}
    first_seen: dict[tuple[str, int], str] = {}
    chains: list[dict[str, Any]] = []
    for path in paths:
        for lineno, obj in read_jsonl(path):
            f = Fields(obj, path, lineno)
            qid = f.str_or_int("question_id", required=True)
            sid = f.get("sample_id", int, required=True)
            if sid < 0:
                raise f.error("sample_id", f"must be >= 0, got {sid}")
            where = f"{path}:{lineno}"
            if (qid, sid) in first_seen:
                raise f.error(
                    "sample_id",
                    f"duplicate chain (question_id {qid!r}, sample_id {sid}); first at {first_seen[(qid, sid)]}",
                    hint="each (question_id, sample_id) pair must be unique",
                )
            first_seen[(qid, sid)] = where
            question = f.get("question", str)
            reference = f.str_or_int("reference")
            if isinstance(obj.get("reference"), (int, float)) and not isinstance(obj.get("reference"), bool):
                reference = str(obj["reference"])
            prev = questions.get(qid)
            if prev is None:
                questions[qid] = Question(qid, question, reference)
            else:
                if reference is not None and prev.reference is not None and reference != prev.reference:
                    raise f.error("reference", f"differs from an earlier chain of question {qid!r} ({prev.reference!r})")
                if (question and not prev.question) or (reference and not prev.reference):
                    questions[qid] = Question(qid, prev.question or question, prev.reference or reference)
            text = f.get("text", str)
            answer = f.str_or_int("answer")
            if isinstance(obj.get("answer"), float):
                answer = repr(obj["answer"])
            if text is None and "answer" not in obj:
                raise f.error("text", "a chain needs 'text' or 'answer'")
            if answer is None and text is not None and "answer" not in obj:
                answer = extract_answer(text)
            rec: dict[str, Any] = {
                "question_id": qid,
                "sample_id": sid,
                "finish_reason": f.get("finish_reason", str),
                "text": text,
                "answer": answer,
                "correct": f.get("correct", bool),
                "reward": None,
            }
            reward = f.get("reward", (int, float))
            rec["reward"] = None if reward is None else float(reward)
            lp = f.get("logprobs", dict)
            n_tokens = f.get("n_tokens", int)
            if lp is not None:
                _parse_logprobs(f, lp, rec)
            if rec.get("tokens") is not None:
                if n_tokens is not None and n_tokens != len(rec["tokens"]):
                    raise f.error("n_tokens", f"is {n_tokens} but logprobs.tokens has {len(rec['tokens'])} tokens")
                n_tokens = len(rec["tokens"])
            elif rec.get("token_logprobs") is not None and n_tokens is None:
                n_tokens = len(rec["token_logprobs"])
            if n_tokens is None:
                if text is None:
                    raise f.error("n_tokens", "cannot be derived: give n_tokens, logprobs.tokens or text")
                if tokenizer is None:
                    raise f.error("n_tokens", "is missing and no tokenizer was given to count the text", hint="pass --tokenizer qwen2.5 or add n_tokens")
                n_tokens = tokenizer.count(text)
            if n_tokens < 0:
                raise f.error("n_tokens", "must be >= 0")
            rec["n_tokens"] = n_tokens
            for key in ("token_logprobs", "top_logprobs", "top_tokens", "entropy", "token_confidence"):
                v = rec.get(key)
                if v is not None and len(v) != n_tokens:
                    raise f.error(f"logprobs.{key}", f"has {len(v)} entries but the chain has {n_tokens} tokens")
            probes = f.get("probes", list)
            if probes is not None:
                _parse_probes(f, probes, rec, n_tokens)
            extra = {k: v for k, v in obj.items() if k not in KNOWN}
            for k in ("prompt", "model", "sampling"):
                if obj.get(k) is not None:
                    extra[k] = obj[k]
            rec["metadata"] = extra or None
            chains.append(rec)
    if not chains:
        raise TraceFormatError("no chains found", path=", ".join(str(p) for p in paths), hint="the file(s) are empty")
    return list(questions.values()), chains


def _parse_logprobs(f: Fields, lp: dict[str, Any], rec: dict[str, Any]) -> None:
    tokens = lp.get("tokens")
    if tokens is not None:
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise f.error("logprobs.tokens", "expected a list of strings")
        rec["tokens"] = tokens
    tl = lp.get("token_logprobs")
    if tl is not None:
        vals = _num_list(f, "logprobs.token_logprobs", tl)
        if tokens is not None and len(vals) > len(tokens):
            raise f.error("logprobs.token_logprobs", f"has {len(vals)} entries for {len(tokens)} tokens")
        if tokens is not None and len(vals) < len(tokens):
            raise f.error("logprobs.token_logprobs", f"has only {len(vals)} entries for {len(tokens)} tokens")
        rec["token_logprobs"] = vals
    top = lp.get("top_logprobs")
    if top is not None:
        if not isinstance(top, list):
            raise f.error("logprobs.top_logprobs", "expected a list of {token: logprob} objects")
        if tokens is not None and len(top) != len(tokens):
            raise f.error("logprobs.top_logprobs", f"has {len(top)} entries for {len(tokens)} tokens")
        vals, toks = [], []
        for i, d in enumerate(top):
            if d is None:
                vals.append([])
                toks.append([])
                continue
            if not isinstance(d, dict):
                raise f.error(f"logprobs.top_logprobs[{i}]", f"expected an object {{token: logprob}}, got {type(d).__name__}")
            items = sorted(d.items(), key=lambda kv: -float(kv[1]) if isinstance(kv[1], (int, float)) else 0.0)
            for tok, v in items:
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    raise f.error(f"logprobs.top_logprobs[{i}]", f"logprob of {tok!r} is not a number")
            vals.append([float(v) for _, v in items])
            toks.append([t for t, _ in items])
        rec["top_logprobs"] = vals
        rec["top_tokens"] = toks
    for key in ("entropy", "token_confidence"):
        if lp.get(key) is not None:
            rec[key] = _num_list(f, f"logprobs.{key}", lp[key])


def _parse_probes(f: Fields, probes: list[Any], rec: dict[str, Any], n_tokens: int) -> None:
    pos, ans, lps, costs, cues = [], [], [], [], []
    last = -1
    for i, p in enumerate(probes):
        field = f"probes[{i}]"
        if not isinstance(p, dict):
            raise f.error(field, f"expected an object, got {type(p).__name__}")
        position = p.get("position")
        if not isinstance(position, int) or isinstance(position, bool):
            raise f.error(f"{field}.position", "expected an integer token position")
        if position < 0 or position > n_tokens:
            raise f.error(f"{field}.position", f"{position} is outside 0..{n_tokens} (the chain's tokens)")
        if position < last:
            raise f.error(f"{field}.position", "probes must be sorted by position")
        last = position
        a = p.get("answer")
        if a is not None and not isinstance(a, (str, int, float)):
            raise f.error(f"{field}.answer", f"expected a string or null, got {type(a).__name__}")
        logprob = p.get("logprob")
        if logprob is not None and (not isinstance(logprob, (int, float)) or isinstance(logprob, bool)):
            raise f.error(f"{field}.logprob", "expected a number")
        cost = p.get("cost", 0)
        if not isinstance(cost, int) or isinstance(cost, bool) or cost < 0:
            raise f.error(f"{field}.cost", "expected a non-negative integer (prefill + decode tokens)")
        cue = p.get("cue")
        if cue is not None and not isinstance(cue, str):
            raise f.error(f"{field}.cue", "expected a string")
        pos.append(position)
        ans.append(None if a is None or a == "" else str(a))
        lps.append(math.nan if logprob is None else float(logprob))
        costs.append(cost)
        cues.append(cue)
    rec["probe_position"] = pos
    rec["probe_answer"] = ans
    rec["probe_logprob"] = lps
    rec["probe_cost"] = costs
    rec["probe_cue"] = cues
    first = next((p for p, a in zip(pos, ans) if a is not None), -1)
    rec["first_candidate_position"] = first
