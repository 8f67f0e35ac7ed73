"""Pull answers out of model text: the final answer and every answer statement.

:func:`extract_answer` reads the final answer of one model output, the way
math benchmarks grade it. :func:`find_candidates` lists every explicit answer
statement inside a reasoning chain with its character span; importers of
text-only traces turn those spans into probes ("had the model stopped here, it
would have answered X").

Precedence for the final answer, first that applies:

1. the last ``\\boxed{...}`` or ``\\fbox{...}`` (balanced braces, nesting allowed);
2. the last answer phrase: "the (final) answer is X", "X is the answer",
   "Answer: X", "**Final Answer:** X";
3. the last ``#### X`` (GSM8K);
4. the last number in the text.

A ``<think>...</think>`` block is skipped only when the text after
``</think>`` yields an answer; reasoning models restate the answer there, and
an empty or cut-off summary must not hide the one inside the thinking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stopwise.errors import TraceFormatError

__all__ = ["Candidate", "extract_answer", "find_candidates", "gsm8k_reference"]


@dataclass(frozen=True)
class Candidate:
    """One explicit answer statement in a text.

    Attributes
    ----------
    start, end : int
        Character span ``text[start:end]`` of the whole statement (the phrase
        and its answer, e.g. ``"the answer is 42"`` or ``"\\boxed{42}"``).
    answer : str
        The cleaned answer string.
    """

    start: int
    end: int
    answer: str


# --------------------------------------------------------------------------- patterns

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_THINK_END_RE = re.compile(r"</think>|<\|end_of_thought\|>")

_NUM = r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+"
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")

# A number not glued to a word or to another number ("x2", "3.4.5"); a minus
# sign counts only when it cannot be a binary minus ("16-11" gives 11).
_LAST_NUM_RE = re.compile(
    r"(?<![\w.])(-?)(\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)?)(?![\w])"
)

_HEDGE = (
    r"(?:(?:probably|likely|indeed|therefore|thus|then|definitely|simply|just|still|"
    r"actually|clearly|obviously|now|also|again|exactly|certainly)\s*,?\s+)*"
)
# "the (final/correct) answer is X", "answer should be X", "Answer: X", "**Final Answer:** X".
_PHRASE_RE = re.compile(
    r"\b(?:(?:the|my|our|final|correct|right)\s+)*answer"
    r"(?:\s*(?:is|should\s+be|would\s+be|must\s+be|will\s+be|=)(?![\w])\s*:?|(?P<colon>\s*(?:\*\*)?\s*:))"
    + r"\s*(?:\*\*)?\s*"
    + _HEDGE,
    re.IGNORECASE,
)
# "540 is the answer", "$\frac{1}{2}$ is the correct answer".
_POSTFIX_RE = re.compile(
    r"(?P<expr>\$?(?:" + _NUM + r")%?|\$[^$\n]{1,60}\$|\\\([^\n]{1,80}?\\\))"
    r"\s+(?:is|should\s+be|must\s+be)\s+(?:the|my|our)\s+(?:(?:correct|right|final)\s+)?answer\b",
    re.IGNORECASE,
)
# A "**Final Answer**" header on its own; the answer follows on the next lines.
_HEADER_RE = re.compile(r"\*\*\s*final\s+answer\s*:?\s*\*\*\s*:?", re.IGNORECASE)
_GSM_RE = re.compile(r"####\s*([^\n]+)")

_WRAPPERS = (r"\text", r"\textbf", r"\mathrm", r"\mbox", r"\textrm", r"\mathbf")
_UNIT_AFTER_NUM_RE = re.compile(rf"^((?:{_NUM})%?)\s+(?!pi\b)[A-Za-z]{{2,}}")
# Words that follow "the answer is" in chatter, never as an answer.
_NOT_ANSWERS = frozenset(
    "correct right wrong incorrect valid invalid consistent same different clear obvious "
    "unclear that this it not in to the a an there here yes? no? above below".split()
)
_LETTER_RE = re.compile(r"^\(?(?:option\s+|choice\s+)?\(?([A-Za-z])\)?(?=$|[\s.:),])", re.IGNORECASE)


# --------------------------------------------------------------------------- helpers


def _match_brace(text: str, open_pos: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``open_pos``, or -1 if unbalanced."""
    depth = 0
    i = open_pos
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2  # an escaped brace \{ does not nest
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """Outermost ``\\boxed{...}``/``\\fbox{...}`` as ``(start, end, content)``; empty ones skipped."""
    out: list[tuple[int, int, str]] = []
    pos = 0
    while True:
        m = _BOX_RE.search(text, pos)
        if m is None:
            return out
        close = _match_brace(text, m.end() - 1)
        if close < 0:  # cut off mid-box; a later box may still be complete
            pos = m.end()
            continue
        content = text[m.end() : close]
        if content.strip():
            out.append((m.start(), close + 1, content))
        pos = close + 1


def _unwrap_command(s: str, commands: tuple[str, ...]) -> str:
    """``\\cmd{X}`` -> ``X`` when the whole string is one such command."""
    changed = True
    while changed:
        changed = False
        for cmd in commands:
            if s.startswith(cmd):
                rest = s[len(cmd) :].lstrip()
                if rest.startswith("{"):
                    close = _match_brace(rest, 0)
                    if close == len(rest) - 1:
                        s = rest[1:-1].strip()
                        changed = True
    return s


def _clean(expr: str) -> str:
    """Strip the decoration around an answer: whitespace, ``$``, ``\\text{}``, bold, trailing period."""
    s = expr.strip()
    for _ in range(4):
        before = s
        s = s.strip().strip("*").strip()
        if s.startswith("$$") and s.endswith("$$") and len(s) >= 4:
            s = s[2:-2]
        elif s.startswith("$") and s.endswith("$") and len(s) >= 2:
            s = s[1:-1]
        elif s.startswith("\\(") and s.endswith("\\)"):
            s = s[2:-2]
        elif s.startswith("\\[") and s.endswith("\\]"):
            s = s[2:-2]
        s = s.strip()
        s = _unwrap_command(s, (r"\boxed", r"\fbox", *_WRAPPERS))
        s = s.rstrip(".,;:").rstrip()
        if s.startswith("\\$"):
            s = s[2:].lstrip()
        elif s.startswith("$") and s.count("$") == 1:
            s = s[1:].lstrip()  # currency: "$18"
        if s == before:
            break
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    return s


def _skip_ws(text: str, pos: int, max_newlines: int = 2) -> int:
    newlines = 0
    n = len(text)
    while pos < n and text[pos] in " \t\r\n":
        if text[pos] == "\n":
            newlines += 1
            if newlines > max_newlines:
                break
        pos += 1
    return pos


def _plain_end(text: str, pos: int, limit: int = 200) -> int:
    """End of a plain-text expression: newline, sentence end, or clause break at depth 0."""
    depth = 0
    n = min(len(text), pos + limit)
    i = pos
    while i < n:
        c = text[i]
        if c == "\n":
            return i
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth < 0:
                return i
        elif c == "." and (i + 1 >= len(text) or text[i + 1] in " \t\r\n*<"):
            return i
        elif c == "<" and text.startswith("</", i):
            return i
        elif c in ";!?":
            return i
        elif c == "*" and text.startswith("**", i):
            return i
        elif depth == 0 and c == "," and re.match(r",\s+[A-Za-z]{2,}", text[i : i + 6]):
            return i
        elif depth == 0 and c == " " and re.match(
            r" (?:because|since|which|but|so|as|and then|per|for|when|if)\b", text[i : i + 10]
        ):
            return i
        i += 1
    return i


def _grab(text: str, pos: int) -> tuple[str, int] | None:
    """Read the answer expression starting at ``pos``: ``(raw expression, end)``."""
    pos = _skip_ws(text, pos)
    if pos >= len(text):
        return None
    rest = text[pos:]
    m = _BOX_RE.match(rest)
    if m is not None:
        close = _match_brace(text, pos + m.end() - 1)
        return (text[pos : close + 1], close + 1) if close >= 0 else None
    for opener, closer in (("\\[", "\\]"), ("\\(", "\\)"), ("$$", "$$")):
        if rest.startswith(opener):
            close = text.find(closer, pos + len(opener), pos + 400)
            if close < 0:
                return None
            return text[pos : close + len(closer)], close + len(closer)
    if rest.startswith("$"):
        num = re.match(r"\$\s*(\d[\d,]*(?:\.\d+)?)", rest)
        if num is not None and (num.end() >= len(rest) or rest[num.end()] != "$"):
            # "$18" with no closing dollar right after the number is currency
            after = rest[num.end() : num.end() + 1]
            if after == "" or not re.match(r"[\^\\/_{+*]", after):
                return num.group(1), pos + num.end()
        close = text.find("$", pos + 1, pos + 300)
        line_end = text.find("\n", pos)
        if close >= 0 and (line_end < 0 or close < line_end):
            return text[pos : close + 1], close + 1
        return None
    end = _plain_end(text, pos)
    return text[pos:end], end


def _looks_like_answer(s: str, strict: bool) -> bool:
    """Whether a cleaned phrase expression is an answer rather than chatter."""
    if not s or len(s) > (80 if strict else 200):
        return False
    if strict:
        if re.match(r"[A-Za-z]{3,}\b", s):  # "not 5", "correct", "in minutes"
            return False
        return bool(
            re.search(r"\d|\\", s)
            or re.fullmatch(r"\(?[A-Za-z]\)?", s)
            or re.search(r"[A-Za-z].*[+\-*/^=<>]|[+\-*/^=<>].*[A-Za-z]", s)
            or re.search(r"[π√∞]", s)
        )
    return s.split()[0].lower() not in _NOT_ANSWERS


def _postclean(expr: str) -> str:
    s = _clean(expr)
    parts = re.split(r"(?<![<>!])=(?!=)", s)
    if len(parts) > 1 and not any(re.search(r"[A-Za-z]", p) for p in parts[:-1]):
        s = _clean(parts[-1])  # "2*120*120 = 28,800": the value, not the arithmetic
    m = _UNIT_AFTER_NUM_RE.match(s)
    if m is not None:
        s = _clean(m.group(1))
    return s


def _from_sentence(line: str) -> str | None:
    """The answer inside a sentence such as ``Terry spends **\\$75.00** on yogurt.``."""
    for pattern in (r"\*\*(.+?)\*\*", r"\\boxed\{(.+)\}", r"\\\((.+?)\\\)", r"(?<!\\)\$([^$]+?)\$"):
        for inner in reversed(re.findall(pattern, line)):
            ans = _postclean(inner)
            if _looks_like_answer(ans, strict=True):
                return ans
    return _last_number(line)


def _phrase_candidates(text: str, strict: bool) -> list[Candidate]:
    """Answer phrases ("the answer is X", "X is the answer", "Answer: X") in text order."""
    out: list[Candidate] = []
    for m in _PHRASE_RE.finditer(text):
        got = _grab(text, m.end())
        ans = _postclean(got[0]) if got is not None else ""
        end = got[1] if got is not None else m.end()
        if m.group("colon") is not None and not _looks_like_answer(ans, strict=True):
            # a labelled answer line written as a sentence: "**Answer:** Anne is 8 years old."
            pos = _skip_ws(text, m.end(), max_newlines=1)
            line_end = text.find("\n", pos)
            line_end = len(text) if line_end < 0 else min(line_end, pos + 300)
            sent = _from_sentence(text[pos:line_end])
            if sent is not None:
                ans, end = sent, len(text[:line_end].rstrip())
        if _looks_like_answer(ans, strict):
            start = m.start() - 2 if text.startswith("**", m.start() - 2) else m.start()
            out.append(Candidate(start, end, ans))
    for m in _HEADER_RE.finditer(text):
        # "**Final Answer**\nRosa is 49 years old." (a boxed line is left to the box)
        pos = _skip_ws(text, m.end(), max_newlines=2)
        line_end = text.find("\n", pos)
        line_end = len(text) if line_end < 0 else min(line_end, pos + 300)
        line = text[pos:line_end]
        if line.strip() and _BOX_RE.search(line) is None and _HEADER_RE.match(line) is None:
            sent = _from_sentence(line)
            if sent is not None and _looks_like_answer(sent, strict):
                out.append(Candidate(m.start(), len(text[:line_end].rstrip()), sent))
    for m in _POSTFIX_RE.finditer(text):
        ans = _postclean(m.group("expr"))
        if _looks_like_answer(ans, strict):
            out.append(Candidate(m.start(), m.end(), ans))
    out.sort(key=lambda c: (c.start, -c.end))
    return out


def _gsm_answer(text: str) -> str | None:
    matches = _GSM_RE.findall(text)
    if not matches:
        return None
    ans = _postclean(matches[-1])
    return ans.replace(",", "") if re.fullmatch(r"-?[\d,]+(?:\.\d+)?", ans) else ans or None


def _last_number(text: str) -> str | None:
    last = None
    for m in _LAST_NUM_RE.finditer(text):
        last = m
    if last is None:
        return None
    sign = last.group(1)
    if sign and last.start() > 0 and (text[last.start() - 1].isalnum() or text[last.start() - 1] in ")]}"):
        sign = ""
    return sign + last.group(2).replace(",", "")


def _letter(s: str, choices: str) -> str | None:
    s = _clean(s)
    m = _LETTER_RE.match(s)
    if m is None:
        return None
    letter = m.group(1)
    if letter.upper() in choices.upper():
        # lower case only counts when it is the whole answer ("b"), not a word ("a cat")
        if letter.isupper() or len(s.strip("()")) == 1:
            return letter.upper()
    return None


def _extract(text: str, choices: str | None) -> str | None:
    if choices:
        for _, _, content in reversed(_boxes(text)):
            got = _letter(content, choices)
            if got is not None:
                return got
        for cand in reversed(_phrase_candidates(text, strict=False)):
            got = _letter(cand.answer, choices)
            if got is not None:
                return got
        parens = re.findall(r"\(([A-Z])\)", text)
        for letter in reversed(parens):
            if letter in choices.upper():
                return letter
        return None
    boxes = _boxes(text)
    if boxes:
        ans = _postclean(boxes[-1][2])
        if ans:
            return ans
    phrases = _phrase_candidates(text, strict=False)
    if phrases:
        return max(phrases, key=lambda c: (c.end, c.start)).answer
    gsm = _gsm_answer(text)
    if gsm:
        return gsm
    return _last_number(text)


# --------------------------------------------------------------------------- public


def extract_answer(text: str | None, *, choices: str | None = None) -> str | None:
    """Final answer of one model output.

    Parameters
    ----------
    text : str or None
        The model output (reasoning and summary).
    choices : str, optional
        Letters of a multiple-choice question, e.g. ``"ABCD"``; the answer is
        then one of these letters (upper case).

    Returns
    -------
    str or None
        The cleaned answer (no surrounding ``$``/``\\text{}``, no trailing
        period, no thousands commas in a plain number), or ``None`` when the
        text states no answer.

    Examples
    --------
    >>> extract_answer(r"so the total is \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    >>> extract_answer("The answer is 42.")
    '42'
    >>> extract_answer("Natalia sold 48+24 = 72 clips.\\n#### 72")
    '72'
    >>> extract_answer("Comparing the options, the answer is (B).", choices="ABCD")
    'B'
    >>> extract_answer("I am not sure.") is None
    True
    """
    if not text:
        return None
    ends = list(_THINK_END_RE.finditer(text))
    if ends:
        after = text[ends[-1].end() :]
        if after.strip():
            got = _extract(after, choices)
            if got is not None:
                return got
    return _extract(text, choices)


def gsm8k_reference(answer_field: str) -> str:
    """Reference answer of a GSM8K record: the text after ``####``, commas removed.

    Parameters
    ----------
    answer_field : str
        The ``answer`` field of a GSM8K record (worked solution ending in ``#### N``).

    Returns
    -------
    str

    Raises
    ------
    TraceFormatError
        If the field has no ``####`` marker.

    Examples
    --------
    >>> gsm8k_reference("He sprints 3*3=<<3*3=9>>9 times\\n#### 1,540")
    '1540'
    """
    if not isinstance(answer_field, str) or "####" not in answer_field:
        raise TraceFormatError(
            f"GSM8K answer has no '####' marker: {str(answer_field)[:60]!r}",
            field="answer",
            hint="pass the full GSM8K 'answer' field, which ends in '#### <number>'",
        )
    return answer_field.rsplit("####", 1)[1].strip().replace(",", "")


def find_candidates(text: str) -> list[Candidate]:
    """Every explicit answer statement in a reasoning chain, in text order.

    Counted: ``\\boxed{X}``; "the (final) answer is X" (also "should be",
    "would be"); "X is the answer"; "Answer: X" / "**Answer:** X" /
    "Final Answer: X"; a "**Final Answer**" header followed by a box (one
    candidate spanning both). Not counted: arithmetic such as ``3*3 = 9``,
    "so the total is 9", and phrases whose object is not an answer ("the
    answer is correct", "the answer should be in minutes").

    Parameters
    ----------
    text : str

    Returns
    -------
    list of Candidate
        Non-overlapping, sorted by ``start``; a statement that contains a box
        is one candidate.

    Examples
    --------
    >>> t = "3*3 = 9 sprints, 9*60 = 540. So the answer is 540.\\n**Final Answer**\\n\\\\boxed{540}"
    >>> [(c.answer, t[c.start:c.end]) for c in find_candidates(t)]
    [('540', 'the answer is 540'), ('540', '**Final Answer**\\n\\\\boxed{540}')]
    """
    if not text:
        return []
    raw: list[Candidate] = []
    for start, end, content in _boxes(text):
        ans = _postclean(content)
        if ans:
            raw.append(Candidate(start, end, ans))
    raw.extend(_phrase_candidates(text, strict=True))
    raw.sort(key=lambda c: (c.start, -c.end))
    kept: list[Candidate] = []
    for c in raw:
        if kept and c.start < kept[-1].end:
            continue  # inside (or overlapping) a statement already counted
        kept.append(c)
    # A "**Final Answer**" header owns the boxed statement that follows it closely.
    for m in _HEADER_RE.finditer(text):
        nxt = next((i for i, c in enumerate(kept) if c.end > m.end()), None)
        if nxt is None:
            continue
        c = kept[nxt]
        gap = text[m.end() : c.start]
        if c.start >= m.end() and len(gap) <= 300 and "\n\n\n" not in gap and _BOX_RE.search(text, c.start, c.end):
            kept[nxt] = Candidate(m.start(), c.end, c.answer)
    return kept
