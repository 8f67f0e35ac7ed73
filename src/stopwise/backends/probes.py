"""Where probes are taken and how a forced answer is read (shared by collection and serving).

A probe position is "after ``p`` generated tokens". Scheduled probes come every
``every`` tokens; cue probes come after a token that ends a blank line and
*before* a transition word ("Wait", "Hmm", "Alternatively", "But", "However"),
i.e. at the position of the token preceding the word. The forcing string
appended for a probe ends inside ``\\boxed{``; the answer is the text up to the
matching closing brace.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DEFAULT_FORCING = "\n\nFinal answer: $\\boxed{"
WORD_CUES = {"wait": "wait", "hmm": "hmm", "alternatively": "alternatively", "but": "but", "however": "however"}


def forced_answer(text: str) -> str | None:
    """The answer inside a forced ``\\boxed{`` (the text up to its closing brace), or None."""
    depth = 1
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                ans = text[:i].strip()
                return ans or None
    return None


def forced_answer_done(text: str) -> bool:
    """Stop decoding a probe: the box is closed, or a line ended without closing it."""
    return forced_answer(text) is not None or "\n" in text


def forced_span(pieces: Iterable[tuple[str, float]]) -> tuple[str, float, int]:
    """A probe's continuation up to where its answer ends (:func:`forced_answer_done`).

    ``pieces`` are the decoded tokens' (text, logprob); returns the text, the summed
    logprob (NaNs skipped) and the number of tokens, counted as the embedded engine
    decodes a probe: tokens past the answer's end are neither summed nor paid for.
    """
    text, lp, n = "", 0.0, 0
    for piece, logprob in pieces:
        text += piece
        n += 1
        if not math.isnan(logprob):
            lp += logprob
        if forced_answer_done(text):
            break
    return text, lp, n


def token_cue(text: str, prev: str) -> tuple[str | None, bool]:
    """The cue a token is, and whether the probe goes before it (word cues) or after (blank lines)."""
    if "\n\n" in text or (prev.endswith("\n") and text.startswith("\n")):
        return "blank_line", False
    w = text.strip().strip(",.:;!").lower()
    if w in WORD_CUES:
        return WORD_CUES[w], True
    return None, False


@dataclass(frozen=True)
class ProbeSchedule:
    """Probe every ``every`` tokens (0: never) and at cue tokens if ``cues``."""

    every: int = 32
    cues: bool = True

    def describe(self) -> str:
        s = f"every {self.every} tokens" if self.every else "no scheduled probes"
        if self.cues:
            s += " and at cue tokens (blank line after; wait/hmm/alternatively/but/however before)"
        return s

    def at(self, texts: Sequence[str], position: int, finished: bool) -> list[str]:
        """Cues at ``position`` (tokens generated) given the chain's token texts so far.

        ``texts`` must hold token ``position + 1`` when there is one (a word cue is
        the probe *before* that word); ``finished`` says the chain has no more tokens.
        """
        out: list[str] = []
        if position < 1:
            return out
        if self.cues:
            prev = texts[position - 2] if position >= 2 else ""
            cue, before = token_cue(texts[position - 1], prev)
            if cue is not None and not before:
                out.append(cue)
            if position < len(texts):
                nxt, before = token_cue(texts[position], texts[position - 1])
                if nxt is not None and before:
                    out.append(nxt)
        if self.every and position % self.every == 0 and not finished:
            out.append("schedule")
        return out
