"""Question sets to collect traces on, loaded from files (no network).

Names accepted by :func:`load_dataset`:

``gsm8k``, ``math500``, ``aime24``
    The test splits vendored in ``stopwise/data/questions`` (MIT; sources and
    sha256 in ``data/questions/README.md``). Question ids are the text-hash ids
    the bundled sets use (``q-<sha1[:12]>``), so a question has one id everywhere.
``reasoning-gym:TASK[?key=value&...]``
    A reasoning-gym family generated with a fixed seed (``seed`` argument) and
    graded with its own ``score_answer``; extra config as a query string, e.g.
    ``reasoning-gym:basic_arithmetic?max_terms=3``.
``jsonl:PATH``
    Any JSONL with a question field (``question``, ``problem`` or ``prompt``) and
    a reference field (``answer``, ``reference`` or ``solution``), optional ``id``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stopwise.errors import ConfigError, MissingExtraError, TraceFormatError, UnknownNameError
from stopwise.traces.importers.common import question_id_from_text, read_jsonl

QUESTIONS_DIR = Path(__file__).parent / "data" / "questions"

MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class DatasetItem:
    """One question: id, text, reference answer, and an optional grader ``grade(answer) -> bool``."""

    question_id: str
    question: str
    reference: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    grade: Callable[[str | None], bool] | None = None


@dataclass
class Dataset:
    name: str
    items: list[DatasetItem]
    system_prompt: str = MATH_SYSTEM
    license: str = ""
    source: str = ""


def _qid(prefix: str, text: str) -> str:
    return question_id_from_text(prefix, text)


def _gsm8k() -> Dataset:
    from stopwise.answers import gsm8k_reference

    items = []
    for i, obj in read_jsonl(QUESTIONS_DIR / "gsm8k.jsonl.gz"):
        q = obj["question"]
        items.append(DatasetItem(_qid("q", q), q, gsm8k_reference(obj["answer"]), {"index": i - 1}))
    return Dataset("gsm8k", items, license="MIT", source="openai/grade-school-math test.jsonl")


def _math500() -> Dataset:
    items = []
    for i, obj in read_jsonl(QUESTIONS_DIR / "math500.jsonl.gz"):
        q = obj["problem"]
        meta = {"index": i - 1, "subject": obj.get("subject"), "level": obj.get("level")}
        items.append(DatasetItem(_qid("q", q), q, str(obj["answer"]), meta))
    return Dataset("math500", items, license="MIT", source="openai/prm800k MATH-500 test split")


def _aime24() -> Dataset:
    items = []
    for i, obj in read_jsonl(QUESTIONS_DIR / "aime24.jsonl.gz"):
        q = obj["problem"]
        items.append(DatasetItem(_qid("q", q), q, str(obj["answer"]), {"index": i - 1, "id": obj.get("id")}))
    return Dataset("aime24", items, license="MIT", source="QwenLM/Qwen2.5-Math evaluation/data/aime24")


def _coerce(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def _reasoning_gym(spec: str, size: int, seed: int) -> Dataset:
    try:
        import reasoning_gym
    except ImportError as exc:
        raise MissingExtraError("reasoning-gym datasets", "tasks", "reasoning-gym") from exc
    from reasoning_gym.factory import DATASETS

    task, _, query = spec.partition("?")
    if task not in DATASETS:
        raise UnknownNameError("reasoning-gym task", task, list(DATASETS))
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise ConfigError(f"reasoning-gym config '?{query}' is not KEY=VALUE pairs joined by '&': {exc}",
                          hint=f"e.g. --dataset 'reasoning-gym:{task}?min_terms=2&max_terms=4'") from exc
    config = {k: _coerce(v) for k, v in pairs}
    for k in ("seed", "size"):
        if k in config:
            raise ConfigError(f"reasoning-gym config key '{k}' is set by stopwise", hint=f"use --{k} instead of ?{k}=")
    try:
        ds = reasoning_gym.create_dataset(task, size=size, seed=seed, **config)
    except (KeyError, ValueError, TypeError, AssertionError) as exc:
        fields = _config_fields(DATASETS[task])
        raise ConfigError(f"reasoning-gym task '{task}' rejected its config {config}: {exc or type(exc).__name__}",
                          hint=f"its config keys: {', '.join(fields)}" if fields else None) from exc
    items = []
    for i in range(size):
        entry = ds[i]

        def grade(answer: str | None, entry: dict = entry) -> bool:
            return answer is not None and float(ds.score_answer(answer, entry)) >= 1.0

        qid = f"rg-{task}-{seed}-{i}"
        items.append(DatasetItem(qid, entry["question"], str(entry["answer"]), {"index": i, "task": task, "config": config}, grade))
    system = "Solve the problem step by step, then put your final answer within \\boxed{}."
    return Dataset(f"reasoning-gym:{spec}", items, system_prompt=system, license="Apache-2.0 (reasoning-gym)", source=f"reasoning-gym {task} seed {seed}")


def _config_fields(entry: Any) -> list[str]:
    """The config keys of a reasoning-gym task (its config dataclass's fields), minus seed and size."""
    import dataclasses

    cls = entry[1] if isinstance(entry, tuple) and len(entry) > 1 else None
    if cls is None or not dataclasses.is_dataclass(cls):
        return []
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("seed", "size")]


def _jsonl(path: str) -> Dataset:
    p = Path(path)
    if not path:
        raise ConfigError("--dataset jsonl: needs a file path", hint="e.g. --dataset jsonl:questions.jsonl")
    if p.is_dir():
        raise ConfigError(f"dataset file '{p.resolve()}' is a directory", hint="give a .jsonl file (one JSON object a line)")
    if not p.is_file():
        raise ConfigError(f"dataset file '{p.resolve()}' does not exist", hint="check the path after jsonl:")
    items = []
    first_line: dict[str, int] = {}
    for line, obj in read_jsonl(p):
        q = next((obj[k] for k in ("question", "problem", "prompt") if k in obj), None)
        if not isinstance(q, str) or not q.strip():
            raise TraceFormatError("needs a non-empty string 'question', 'problem' or 'prompt'", path=path, line=line, field="question")
        ref = next((obj[k] for k in ("answer", "reference", "solution") if k in obj), None)
        if ref is not None and not isinstance(ref, (str, int, float)):
            raise TraceFormatError(f"the reference answer must be a string or a number, got {type(ref).__name__}",
                                   path=path, line=line, field="answer")
        if "id" in obj and (isinstance(obj["id"], bool) or not isinstance(obj["id"], (str, int)) or not str(obj["id"]).strip()):
            raise TraceFormatError(f"'id' must be a non-empty string or an integer, got {obj['id']!r}", path=path, line=line, field="id")
        qid = str(obj["id"]) if "id" in obj else _qid(p.stem, q)
        if qid in first_line:
            what = f"duplicate id '{qid}'" if "id" in obj else "the same question text again (no 'id' to tell them apart)"
            raise TraceFormatError(f"{what}; first on line {first_line[qid]}", path=path, line=line, field="id",
                                   hint="give each line a unique 'id', or drop the repeated question")
        first_line[qid] = line
        items.append(DatasetItem(qid, q, None if ref is None else str(ref), {"line": line}))
    if not items:
        raise TraceFormatError("holds no questions (empty, or blank lines only)", path=path,
                               hint="one JSON object a line with a 'question' and an 'answer'")
    return Dataset(f"jsonl:{p.name}", items, source=str(p))


def load_dataset(name: str, *, size: int = 500, seed: int = 0) -> Dataset:
    """Load a question set by name (see the module docstring).

    ``size`` and ``seed`` apply to reasoning-gym families only.
    """
    if name == "gsm8k":
        return _gsm8k()
    if name == "math500":
        return _math500()
    if name == "aime24":
        return _aime24()
    if name.startswith("reasoning-gym:"):
        return _reasoning_gym(name.split(":", 1)[1], size, seed)
    if name.startswith("jsonl:"):
        return _jsonl(name.split(":", 1)[1])
    raise UnknownNameError("dataset", name, ["gsm8k", "math500", "aime24", "reasoning-gym:TASK", "jsonl:PATH"])
