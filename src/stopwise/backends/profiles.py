"""Model profiles: how a reasoning-model family delimits its thinking, switches it on, and is forced to answer.

The profiles are a declarative table, ``profiles.toml`` next to this module, plus an
optional user TOML file that overrides or adds profiles (:func:`load_profiles`).
:func:`detect_profile` picks one for a model name or chat template;
:class:`ReasoningSplitter` separates a streamed output into reasoning and answer text.

Profile keys (one TOML table ``[name]`` per profile)
-----------------------------------------------------
description : str
name_patterns : list of str
    Regular expressions searched case-insensitively in the model name.
template_markers : list of str
    Substrings that all occur in the chat-template source (its ``\\n`` escapes read as newlines).
format : {"tags", "harmony"}
    ``tags``: thinking between ``think_open`` and ``think_close`` (both then required).
    ``harmony`` (gpt-oss): thinking is the ``analysis_channel``, the answer the ``final_channel``.
think_open, think_close, analysis_channel, final_channel : str
    Any harmony channel but ``final_channel`` counts as reasoning (``analysis``, ``commentary``).
thinks : bool
    Whether the family reasons before answering (default true; ``generic``: false).
prompt_opens_thinking : bool
    The generation prompt already opens the thinking (DeepSeek-R1, QwQ): the output
    starts inside it and only ``think_close`` appears.
chat_template_kwargs, request_fields : table
    The thinking switch: chat-template arguments (``enable_thinking = true``) and
    top-level request fields (gpt-oss ``reasoning_effort``).
forcing, answer : table of str
    Per task kind (``math``, ``multiple_choice``, ``short``), a template holding
    ``{answer}`` exactly once, split with :meth:`str.partition` (never ``str.format``:
    ``\\boxed{`` stays literal). ``forcing``: the text before the placeholder is appended
    to force an answer (it closes the thinking, opens the answer), the text after it ends
    the answer. ``answer``: how the model writes its final answer. Same kinds in both.
extends : str
    In a new profile: start from another profile's keys (not its recognition keys).

Required: ``format``, ``forcing``, ``answer``. A user table named like an existing
profile patches it key by key; user profiles are tried before the bundled ones.

Splitting (:class:`ReasoningSplitter`; needs the delimiters in the text)
------------------------------------------------------------------------
``tags``: where the prompt opens thinking, the output is reasoning (a leading
``think_open`` dropped) until ``think_close``, so an output that never closes it (a
truncated chain) is all reasoning. Otherwise it is answer text unless it starts (after
whitespace) with ``think_open``. ``harmony``: analysis messages are reasoning, final
messages answer text, other channels reasoning; markers and headers are dropped.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from stopwise.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli has the same API
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

__all__ = ["ModelProfile", "ProfileError", "ReasoningSplitter", "detect_profile", "load_profiles", "split_reasoning"]

log = logging.getLogger("stopwise.profiles")
PLACEHOLDER = "{answer}"
GENERIC = "generic"
FORMATS = ("tags", "harmony")
_STR, _BOOL, _LIST, _TABLE, _TEMPLATES = "a string", "true or false", "a list of strings", "a table", "a table of strings"
_KEYS = {
    "description": _STR, "extends": _STR, "name_patterns": _LIST, "template_markers": _LIST, "format": _STR,
    "think_open": _STR, "think_close": _STR, "prompt_opens_thinking": _BOOL, "analysis_channel": _STR,
    "final_channel": _STR, "thinks": _BOOL, "chat_template_kwargs": _TABLE, "request_fields": _TABLE, "forcing": _TEMPLATES,
    "answer": _TEMPLATES,
}
_NOT_INHERITED = ("name_patterns", "template_markers", "description", "extends")
_HARMONY_MARKERS = ("<|start|>", "<|channel|>", "<|message|>", "<|constrain|>", "<|end|>", "<|return|>", "<|call|>")
_SIMPLE = ("format", "think_open", "think_close", "prompt_opens_thinking", "analysis_channel", "final_channel",
           "thinks", "description")
_warned: set[str] = set()  # model names already warned about (one warning per process)


class ProfileError(ConfigError):
    """A model profile is malformed or unknown; the message names the file, the profile and the key."""


@dataclass(frozen=True)
class ModelProfile:
    """One reasoning-model family (see the module docstring for the fields)."""

    name: str
    format: str = "tags"
    think_open: str = ""
    think_close: str = ""
    prompt_opens_thinking: bool = False
    analysis_channel: str = "analysis"
    final_channel: str = "final"
    thinks: bool = True
    name_patterns: tuple[str, ...] = ()
    template_markers: tuple[str, ...] = ()
    chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    request_fields: Mapping[str, Any] = field(default_factory=dict, hash=False)
    forcing_templates: Mapping[str, str] = field(default_factory=dict, hash=False)
    answer_templates: Mapping[str, str] = field(default_factory=dict, hash=False)
    description: str = ""
    source: str = ""

    def _template(self, table: Mapping[str, str], what: str, kind: str) -> tuple[str, str]:
        if kind not in table:
            raise ProfileError(f"profile '{self.name}' has no {what} for task kind '{kind}'; "
                               f"kinds: {', '.join(table)}", hint=f"add it under [{self.name}.{what}] in a profile file")
        before, _, after = table[kind].partition(PLACEHOLDER)
        return before, after

    def forcing(self, kind: str = "math") -> str:
        """The text appended to a partial output to force an answer (it ends where the answer starts)."""
        return self._template(self.forcing_templates, "forcing", kind)[0]

    def answer_suffix(self, kind: str = "math") -> str:
        """The text that ends a forced answer (e.g. ``}``)."""
        return self._template(self.forcing_templates, "forcing", kind)[1]

    def write_answer(self, answer: str, kind: str = "math") -> str:
        """The final answer as the model writes it (e.g. ``\\(\\boxed{42}\\)``)."""
        before, after = self._template(self.answer_templates, "answer", kind)
        return before + answer + after

    def chat_kwargs(self) -> dict:
        """The chat-template arguments that switch thinking on (may be empty); see also :meth:`request_extras`."""
        return dict(self.chat_template_kwargs)

    def request_extras(self) -> dict:
        """The fields to add to an OpenAI-compatible chat request body (may be empty)."""
        extras = dict(self.request_fields)
        if self.chat_template_kwargs:
            extras["chat_template_kwargs"] = dict(self.chat_template_kwargs)
        return extras

    def raw_reasoning_markers(self) -> tuple[str, str]:
        """The markers the model itself writes before and after its thinking (open is empty where the prompt opened it).

        Thinking and answer text joined with these read back through :meth:`splitter`.
        """
        if self.format == "harmony":
            return (f"<|channel|>{self.analysis_channel}<|message|>",
                    f"<|end|><|start|>assistant<|channel|>{self.final_channel}<|message|>")
        return ("" if self.prompt_opens_thinking else self.think_open), self.think_close

    def splitter(self) -> ReasoningSplitter:
        """A fresh incremental splitter of this family's output into reasoning and answer text."""
        if self.format == "harmony":
            return HarmonySplitter(self)
        return TagSplitter(self)

    def matches_name(self, model: str) -> bool:
        """Whether a model name matches one of the profile's name patterns."""
        return any(re.search(p, model, re.IGNORECASE) for p in self.name_patterns)

    def matches_template(self, chat_template: str) -> bool:
        """Whether a chat template's source holds all of the profile's markers (none: never)."""
        source = chat_template.replace("\\n", "\n")
        return bool(self.template_markers) and all(m in source for m in self.template_markers)


def _partial(buf: str, tags: tuple[str, ...]) -> int:
    """Length of the longest end of ``buf`` that is a proper prefix of one of ``tags`` (held back)."""
    for k in range(min(len(buf), max(len(t) for t in tags) - 1), 0, -1):
        if any(t.startswith(buf[-k:]) for t in tags):
            return k
    return 0


class ReasoningSplitter:
    """Incremental split of a model's output into ``("reasoning", text)`` and ``("content", text)`` pieces.

    Feed chunks as they stream; a delimiter split across chunks (``</thi`` + ``nk>``) is
    held back until it is decided. Call :meth:`flush` at the end of the stream.
    """

    def __init__(self, profile: ModelProfile) -> None:
        self.profile = profile
        self._buf = ""
        self._out: list[tuple[str, str]] = []

    def feed(self, text: str) -> list[tuple[str, str]]:
        """Consume a chunk; return the pieces it decided, adjacent pieces of one kind merged."""
        self._buf += text
        self._run(final=False)
        return self._take()

    def flush(self) -> list[tuple[str, str]]:
        """End of stream: return what was held back."""
        self._run(final=True)
        return self._take()

    def _emit(self, kind: str, text: str) -> None:
        if text and self._out and self._out[-1][0] == kind:
            self._out[-1] = (kind, self._out[-1][1] + text)
        elif text:
            self._out.append((kind, text))

    def _take(self) -> list[tuple[str, str]]:
        out, self._out = self._out, []
        return out

    def _run(self, final: bool) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class TagSplitter(ReasoningSplitter):
    """Splitter for thinking between an open and a close tag (``<think>...</think>``)."""

    def __init__(self, profile: ModelProfile) -> None:
        super().__init__(profile)
        self._state = "start"
        self._lead = profile.think_close[:1]

    def feed(self, text: str) -> list[tuple[str, str]]:
        # the hot path of a proxy (one call a streamed token): nothing held back and no character
        # that could begin the closing tag means the whole chunk keeps the current kind
        if not self._buf and text:
            if self._state == "content":
                return [("content", text)]
            if self._state == "reasoning" and (not self._lead or self._lead not in text):
                return [("reasoning", text)]
        return super().feed(text)

    def _run(self, final: bool) -> None:
        p = self.profile
        while True:
            if self._state == "start":  # before any non-space text: an open tag may come
                rest = self._buf.lstrip()
                if rest.startswith(p.think_open):
                    self._buf, self._state = rest[len(p.think_open):], "reasoning"
                    continue
                if not final and p.think_open.startswith(rest):  # empty or a partial open tag
                    return
                self._state = "reasoning" if p.prompt_opens_thinking else "content"
            elif self._state == "reasoning":
                i = self._buf.find(p.think_close)
                if i >= 0:
                    self._emit("reasoning", self._buf[:i])
                    self._buf, self._state = self._buf[i + len(p.think_close):], "content"
                    continue
                keep = 0 if final else _partial(self._buf, (p.think_close,))
                self._emit("reasoning", self._buf[:len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep:]
                return
            else:
                self._emit("content", self._buf)
                self._buf = ""
                return


class HarmonySplitter(ReasoningSplitter):
    """Splitter for the harmony format (gpt-oss): channels instead of tags."""

    def __init__(self, profile: ModelProfile) -> None:
        super().__init__(profile)
        self._mode = "reasoning" if profile.prompt_opens_thinking else "content"
        self._in_header = False
        self._header = ""
        self._has_channel = False

    def _text(self, text: str) -> None:
        if self._in_header:
            self._header += text
        else:
            self._emit(self._mode, text)

    def _marker(self, m: str) -> None:
        if m in ("<|start|>", "<|channel|>"):
            self._in_header, self._header = True, ""
            self._has_channel = m == "<|channel|>"
        elif m == "<|constrain|>":
            self._header += " "
        elif m == "<|message|>" and self._in_header:
            if self._has_channel:  # the channel name is the header's first word ("final <|constrain|>json")
                channel = (self._header.split() or [""])[0]
                self._mode = "content" if channel == self.profile.final_channel else "reasoning"
            self._in_header = False
        # <|end|>, <|return|>, <|call|> (and a stray <|message|>) are dropped

    def _run(self, final: bool) -> None:
        while self._buf:
            hits = [(i, m) for m in _HARMONY_MARKERS if (i := self._buf.find(m)) >= 0]
            if not hits:
                keep = 0 if final else _partial(self._buf, _HARMONY_MARKERS)
                self._text(self._buf[:len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep:]
                return
            i, m = min(hits)
            self._text(self._buf[:i])
            self._buf = self._buf[i + len(m):]
            self._marker(m)


def split_reasoning(profile: ModelProfile, text: str) -> tuple[str, str]:
    """Split a whole output into ``(reasoning, content)`` (delimiters dropped, whitespace kept)."""
    s = profile.splitter()
    parts = {"reasoning": [], "content": []}
    for kind, piece in s.feed(text) + s.flush():
        parts[kind].append(piece)
    return "".join(parts["reasoning"]), "".join(parts["content"])


# ---------------------------------------------------------------- loading

def _check_value(where: str, key: str, value: Any) -> str | None:
    """What is wrong with one key's value, or None."""
    want = _KEYS[key]
    ok = {_STR: isinstance(value, str), _BOOL: isinstance(value, bool), _TABLE: isinstance(value, dict),
          _TEMPLATES: isinstance(value, dict),
          _LIST: isinstance(value, list) and all(isinstance(v, str) and v for v in value)}[want]
    if not ok:
        return f"{where}: key '{key}' must be {want}, not {value!r}"
    for pat in value if key == "name_patterns" else ():
        try:
            re.compile(pat)
        except re.error as exc:
            return f"{where}: key 'name_patterns': bad regular expression {pat!r} ({exc})"
    what = {"forcing": "forcing string", "answer": "answer template"}.get(key)
    for kind, tpl in value.items() if what else ():
        if not isinstance(tpl, str):
            return f"{where}: key '{key}.{kind}' must be a string, not {tpl!r}"
        if (n := tpl.count(PLACEHOLDER)) != 1:
            place = "no place" if n == 0 else f"{n} places"
            return f"{what} for kind '{kind}' of {where} has {place} for the answer ({PLACEHOLDER}); it needs exactly one"
    return None


def _read(path: str) -> dict[str, dict]:
    """Parse and check one profile file (keys and values, before merging)."""
    if tomllib is None:
        raise ProfileError("reading model profiles needs tomllib (Python >= 3.11) or the package 'tomli'",
                           hint="pip install tomli")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ProfileError(f"cannot read the model-profile file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path} is not valid TOML: {exc}") from exc
    for name, table in data.items():
        if not isinstance(table, dict):
            raise ProfileError(f"{path}: '{name}' must be a profile table ([{name}]), not {table!r}")
        where = f"profile '{name}' in {path}"
        for key, value in table.items():
            if key not in _KEYS:
                close = difflib.get_close_matches(key, _KEYS, n=1)
                raise ProfileError(f"{where}: unknown key '{key}'; allowed keys: {', '.join(_KEYS)}",
                                   hint=f"did you mean '{close[0]}'?" if close else None)
            problem = _check_value(where, key, value)
            if problem:
                raise ProfileError(problem)
    return data


def _merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for key, value in patch.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _build(name: str, raw: dict, path: str) -> ModelProfile:
    where = f"profile '{name}' in {path}"
    fmt = raw.get("format")
    required = ["format", "forcing", "answer"] + (["think_open", "think_close"] if fmt == "tags" else [])
    for key in required:
        if key not in raw:
            raise ProfileError(f"{where}: missing required key '{key}'", hint=f"required keys: {', '.join(required)}")
    if fmt not in FORMATS:
        raise ProfileError(f"{where}: key 'format' must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt == "tags" and (not raw["think_open"] or not raw["think_close"]):
        raise ProfileError(f"{where}: keys 'think_open' and 'think_close' must not be empty")
    if not raw["forcing"] or set(raw["forcing"]) != set(raw["answer"]):
        raise ProfileError(f"{where}: keys 'forcing' and 'answer' must name the same task kinds "
                           f"(forcing: {', '.join(raw['forcing']) or 'none'}; answer: {', '.join(raw['answer']) or 'none'})")
    frozen = {k: MappingProxyType(dict(raw.get(k, {}))) for k in ("chat_template_kwargs", "request_fields")}
    return ModelProfile(
        name=name, source=path, **{k: raw[k] for k in _SIMPLE if k in raw}, **frozen,
        name_patterns=tuple(raw.get("name_patterns", ())), template_markers=tuple(raw.get("template_markers", ())),
        forcing_templates=MappingProxyType(dict(raw["forcing"])), answer_templates=MappingProxyType(dict(raw["answer"])),
    )


def _add(known: dict[str, dict], origin: dict[str, str], tables: dict[str, dict], path: str) -> None:
    for name, table in tables.items():
        if "extends" in table:
            base_name = table["extends"]
            if base_name not in known:
                raise ProfileError(f"profile '{name}' in {path}: key 'extends' names an unknown profile '{base_name}'; "
                                   f"known: {', '.join(known)}")
            base = {k: v for k, v in known[base_name].items() if k not in _NOT_INHERITED}
            known[name] = _merge(base, {k: v for k, v in table.items() if k != "extends"})
        else:
            known[name] = _merge(known.get(name, {}), table)
        origin[name] = path


@lru_cache(maxsize=1)
def _bundled_tables() -> tuple[str, dict[str, dict]]:
    path = str(resources.files("stopwise.backends").joinpath("profiles.toml"))
    return path, _read(path)


def load_profiles(path: str | Path | None = None) -> dict[str, ModelProfile]:
    """The bundled profiles, patched and extended by the user TOML file ``path``, validated.

    Returns a dict in detection order: the user file's profiles first, then the other
    bundled ones. Raises :class:`ProfileError` (naming file, profile and key).
    """
    bundled_path, bundled = _bundled_tables()
    known: dict[str, dict] = {}
    origin: dict[str, str] = {}
    _add(known, origin, bundled, bundled_path)
    order = list(bundled)
    if path is not None:
        user = _read(str(path))
        _add(known, origin, user, str(path))
        order = list(user) + [n for n in order if n not in user]
    return {name: _build(name, known[name], origin[name]) for name in order}


def _warn_unknown(model: str | None) -> None:
    if (model or "") in _warned:
        return
    _warned.add(model or "")
    what = f"model '{model}'" if model else "a model without a name"
    log.warning("%s matches no model profile (by name or chat template); using the '%s' profile "
                "(output is answer text unless it starts with <think>). Choose one with a profile override.",
                what, GENERIC)


def detect_profile(model: str | None, chat_template: str | None = None, *, override: str | None = None,
                   profiles: Mapping[str, ModelProfile] | None = None) -> ModelProfile:
    """The profile for a model: ``override``, else by name pattern, else by chat-template markers, else generic.

    Parameters
    ----------
    model : str or None
        A Hugging Face id, GGUF file name or served model name.
    chat_template : str, optional
        The Jinja chat template (``tokenizer_config.json``, GGUF header).
    override : str, optional
        A profile name, or the path of a TOML file holding exactly one profile.
    profiles : mapping, optional
        The candidates in detection order (default :func:`load_profiles`).

    Returns
    -------
    ModelProfile
        ``generic`` when nothing matches, with one warning per model name per process
        (logger ``stopwise.profiles``).
    """
    if profiles is None:
        profiles = load_profiles()
    if override:
        if override in profiles:
            return profiles[override]
        if override.endswith(".toml") or Path(override).is_file():
            tables = _read(override)
            if len(tables) != 1:
                raise ProfileError(f"the profile file {override} must hold exactly one profile, "
                                   f"not {len(tables)} ({', '.join(tables) or 'none'})")
            return load_profiles(override)[next(iter(tables))]
        close = difflib.get_close_matches(override, list(profiles), n=1)
        raise ProfileError(f"unknown model profile '{override}'; valid: {', '.join(profiles)}",
                           hint=f"did you mean '{close[0]}'?" if close else "or give the path of a .toml profile file")
    if model:
        for prof in profiles.values():
            if prof.matches_name(model):
                return prof
    if chat_template:
        for prof in profiles.values():
            if prof.matches_template(chat_template):
                return prof
    _warn_unknown(model)
    return profiles[GENERIC] if GENERIC in profiles else load_profiles()[GENERIC]
