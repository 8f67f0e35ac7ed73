"""Importers: from files of other shapes to a trace set.

Formats (``stopwise import --format``):

``stopwise``   stopwise JSONL, one chain per line (:mod:`.jsonl`)
``grouped``    several chains per record through a field mapping (:mod:`.reasoning`)
``reasoning``  text-only reasoning-model chains, probes derived from the text
``auto``       chosen from the first record's fields
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

from stopwise import __version__
from stopwise.traces.textprobes import TEXT_CUE_SCHEDULE
from stopwise.errors import ConfigError, TraceFormatError, UnknownNameError
from stopwise.traces.importers.common import read_json_records
from stopwise.traces.model import Provenance, TraceSet, build_trace_set

FORMATS = ("auto", "stopwise", "grouped", "reasoning")
TOKENIZERS = ("qwen2.5", "regex", "none")


def get_tokenizer(name: str | None) -> Any:
    """``qwen2.5`` (offline, from the embedded GGUF header), ``regex`` (approximate) or ``none``."""
    if name in (None, "none"):
        return None
    if name == "qwen2.5":
        from stopwise.traces.tokenize import Tokenizer

        return Tokenizer.qwen25()
    if name == "regex":
        from stopwise.traces.tokenize import RegexTokenizer

        return RegexTokenizer()
    raise UnknownNameError("tokenizer", name, TOKENIZERS)


def detect_format(path: Path) -> str:
    """Guess the format of ``path`` from its first record."""
    first = next(iter(read_json_records(path)), None)
    if first is None:
        raise TraceFormatError("file has no records", path=str(path))
    obj = first[1]
    if "sample_id" in obj or "question_id" in obj:
        return "stopwise"
    if isinstance(obj.get("code"), list) or isinstance(obj.get("response"), list):
        return "grouped"
    if "model_answer" in obj or "deepseek-reasoner (question)" in obj or "full_response" in obj:
        return "reasoning"
    raise TraceFormatError(
        f"cannot tell the format from its fields ({', '.join(itertools.islice(obj, 8))})",
        path=str(path),
        line=first[0],
        hint="pass --format stopwise|grouped|reasoning",
    )


def import_traces(
    paths: list[str | os.PathLike[str]],
    *,
    name: str,
    fmt: str = "auto",
    tokenizer: str | None = None,
    mapping: str | None = None,
    command: str | None = None,
    source: str | None = None,
    license: str | None = None,
    notes: str | None = None,
    checker: Any = None,
) -> TraceSet:
    """Read ``paths`` in format ``fmt`` and return a trace set (nothing is written).

    Raises
    ------
    TraceFormatError
        The first malformed record, naming file, line and field.
    """
    from stopwise.traces.importers.jsonl import parse_stopwise_jsonl
    from stopwise.traces.importers.reasoning import parse_grouped, parse_mapping, parse_reasoning

    ps = [Path(p) for p in paths]
    if not ps:
        raise ConfigError("no input files given")
    for p in ps:
        if not p.is_file():
            raise TraceFormatError("no such file", path=str(p))
    if fmt not in FORMATS:
        raise UnknownNameError("format", fmt, FORMATS)
    fmts = {detect_format(p) if fmt == "auto" else fmt for p in ps}
    if len(fmts) != 1:
        raise ConfigError(f"input files have different formats ({', '.join(sorted(fmts))})", hint="import them separately")
    fmt = fmts.pop()
    tok_name = tokenizer or ("regex" if fmt in ("grouped", "reasoning") else "none")
    tok = get_tokenizer(tok_name)
    if fmt == "stopwise":
        questions, chains = parse_stopwise_jsonl(ps, tokenizer=tok)
        schedule = "as logged"
    elif fmt == "grouped":
        questions, chains = parse_grouped(ps, tokenizer=tok, mapping=parse_mapping(mapping))
        schedule = TEXT_CUE_SCHEDULE
    else:
        if tok is None:
            raise ConfigError("reasoning traces need a tokenizer for token positions", hint="--tokenizer qwen2.5 or regex")
        questions, chains = parse_reasoning(ps, tokenizer=tok)
        schedule = TEXT_CUE_SCHEDULE
    prov = Provenance(
        source=source or ", ".join(p.name for p in ps),
        command=command,
        tokenizer=tok.describe() if tok is not None else None,
        probe_schedule=schedule if any(c.get("probe_position") is not None for c in chains) else None,
        logprob_convention="as provided by the source" if any(c.get("token_logprobs") is not None for c in chains) else None,
        license=license,
        stopwise_version=__version__,
        notes=notes,
        format=fmt,
    )
    return build_trace_set(name, questions, chains, prov, checker=checker)
