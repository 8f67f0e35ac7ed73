"""Shared parsing helpers: JSON(L) reading with line numbers and typed field access."""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stopwise.errors import TraceFormatError


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; bad JSON, bad UTF-8 and a
    damaged .gz name file and line.

    A ``.gz`` file is read through gzip.
    """
    path = Path(path)
    try:
        fh = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as exc:
        raise TraceFormatError(f"cannot open: {exc.strerror}", path=str(path)) from exc
    with fh:
        lineno = 0
        lines = iter(fh)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                break
            except (OSError, EOFError) as exc:  # a .gz that is not gzip, or is truncated
                raise TraceFormatError(f"cannot be read: {exc}", path=str(path), line=lineno + 1,
                                       hint="a .gz file must be gzip-compressed and complete") from exc
            lineno += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TraceFormatError(f"is not UTF-8 text ({exc.reason} at byte {exc.start + 1})", path=str(path),
                                       line=lineno, hint="save the file as UTF-8") from exc
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceFormatError(
                    f"invalid JSON at column {exc.colno}: {exc.msg}",
                    path=str(path),
                    line=lineno,
                    hint="each line must be one JSON object",
                ) from exc
            if not isinstance(obj, dict):
                raise TraceFormatError(
                    f"expected a JSON object, got {type(obj).__name__}", path=str(path), line=lineno
                )
            yield lineno, obj


def read_json_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Records of a .json file holding a list of objects (index+1 as 'line'), or of a .jsonl file."""
    path = Path(path)
    if path.suffix != ".json":
        yield from read_jsonl(path)
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TraceFormatError(f"cannot open: {exc.strerror}", path=str(path)) from exc
    except json.JSONDecodeError as exc:
        raise TraceFormatError(f"invalid JSON: {exc.msg}", path=str(path), line=exc.lineno) from exc
    if not isinstance(data, list):
        raise TraceFormatError("expected a JSON list of records", path=str(path))
    for i, obj in enumerate(data, 1):
        if not isinstance(obj, dict):
            raise TraceFormatError(f"record {i} is not an object", path=str(path), line=i)
        yield i, obj


class Fields:
    """Typed access to one record's fields, raising errors that name file, line and field."""

    def __init__(self, obj: dict[str, Any], path: str | Path, line: int) -> None:
        self.obj = obj
        self.path = str(path)
        self.line = line

    def error(self, field: str, message: str, hint: str | None = None) -> TraceFormatError:
        return TraceFormatError(message, path=self.path, line=self.line, field=field, hint=hint)

    def get(self, field: str, types: type | tuple[type, ...], *, required: bool = False, default: Any = None) -> Any:
        if field not in self.obj or self.obj[field] is None:
            if required:
                raise self.error(field, "is required but missing")
            return default
        v = self.obj[field]
        if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise self.error(field, f"expected {_names(types)}, got bool")
        if not isinstance(v, types):
            raise self.error(field, f"expected {_names(types)}, got {type(v).__name__} {_short(v)}")
        return v

    def str_or_int(self, field: str, *, required: bool = False) -> str | None:
        v = self.get(field, (str, int), required=required)
        return None if v is None else str(v)

    def listish(self, field: str, *, required: bool = False) -> list | None:
        """A list, or a string holding a JSON/Python list (as some released files store them)."""
        v = self.obj.get(field)
        if v is None:
            if required:
                raise self.error(field, "is required but missing")
            return None
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                try:
                    v = ast.literal_eval(v)
                except (ValueError, SyntaxError) as exc:
                    raise self.error(field, "expected a list (or a string holding one)") from exc
        if not isinstance(v, list):
            raise self.error(field, f"expected a list, got {type(v).__name__}")
        return v


def _names(types: type | tuple[type, ...]) -> str:
    if isinstance(types, tuple):
        return " or ".join(t.__name__ for t in types)
    return types.__name__


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def question_id_from_text(prefix: str, text: str) -> str:
    """A stable id from a question's text, so the same question has one id across sets."""
    norm = " ".join(text.split())
    return f"{prefix}-{hashlib.sha1(norm.encode('utf-8')).hexdigest()[:12]}"
