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
    task, _, query = spec.partition("?")
    config = {k: _coerce(v) for k, v in urllib.parse.parse_qsl(query)}
    try:
        ds = reasoning_gym.create_dataset(task, size=size, seed=seed, **config)
    except (KeyError, ValueError) as exc:
        from reasoning_gym.factory import DATASETS

        if task not in DATASETS:
            raise UnknownNameError("reasoning-gym task", task, list(DATASETS)) from exc
        raise ConfigError(f"reasoning-gym task '{task}' rejected its config {config}: {exc}") from exc
    items = []
    for i in range(size):
        entry = ds[i]

        def grade(answer: str | None, entry: dict = entry) -> bool:
            return answer is not None and float(ds.score_answer(answer, entry)) >= 1.0

        qid = f"rg-{task}-{seed}-{i}"
        items.append(DatasetItem(qid, entry["question"], str(entry["answer"]), {"index": i, "task": task, "config": config}, grade))
    system = "Solve the problem step by step, then put your final answer within \\boxed{}."
    return Dataset(f"reasoning-gym:{spec}", items, system_prompt=system, license="Apache-2.0 (reasoning-gym)", source=f"reasoning-gym {task} seed {seed}")


def _jsonl(path: str) -> Dataset:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"dataset file '{path}' does not exist")
    items = []
    for line, obj in read_jsonl(p):
        q = next((obj[k] for k in ("question", "problem", "prompt") if k in obj), None)
        if not isinstance(q, str):
            raise TraceFormatError("needs a string 'question', 'problem' or 'prompt'", path=path, line=line, field="question")
        ref = next((obj[k] for k in ("answer", "reference", "solution") if k in obj), None)
        qid = str(obj["id"]) if "id" in obj else _qid(p.stem, q)
        items.append(DatasetItem(qid, q, None if ref is None else str(ref), {"line": line}))
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
