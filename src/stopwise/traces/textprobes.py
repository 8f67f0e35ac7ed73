"""Probes derived from the text of a reasoning chain (for corpora without logprobs).

At each *cue* of a chain (a blank line, "Wait", "Hmm", "Alternatively", "But",
"However", "Let me check/verify", "Double-check"), the probe's answer is the
latest candidate answer the chain has explicitly stated before the cue (a boxed
answer, "the answer is ...", "Final answer: ..."; intermediate arithmetic such
as "= 9" is not an answer), and its position is the cue's position in tokens:
stopping there returns that answer. Such probes cost nothing (the text is
already there), have no logprob (NaN), and are labelled with their cue.
"""

from __future__ import annotations

import math
import re
from typing import Any

#: the probe schedule a trace set of text-derived probes records in its provenance (a server reads it
#: to take the same probes live, from the stream)
TEXT_CUE_SCHEDULE = "text cues (blank line, wait, hmm, alternatively, but, however, check)"

CUE_RE = re.compile(
    r"(?P<blank_line>\n[ \t]*\n)"
    r"|(?<![A-Za-z])(?P<wait>Wait)\b"
    r"|(?<![A-Za-z])(?P<hmm>Hmm+)\b"
    r"|(?<![A-Za-z])(?P<alternatively>Alternatively)\b"
    r"|(?<![A-Za-z])(?P<but>But)\b"
    r"|(?<![A-Za-z])(?P<however>However)\b"
    r"|(?<![A-Za-z])(?P<check>Let me (?:double[- ]?)?(?:check|verify)|Double[- ]check(?:ing)?)\b"
)


def text_probes(text: str, tokenized: Any) -> dict[str, Any]:
    """Probe columns for one chain's text.

    Parameters
    ----------
    text : str
    tokenized : stopwise.traces.tokenize.TokenizedText
        Token end offsets of ``text``.

    Returns
    -------
    dict
        ``probe_position``, ``probe_answer``, ``probe_logprob`` (NaN),
        ``probe_cost`` (0), ``probe_cue`` and ``first_candidate_position``
        (token position where the first candidate answer statement ends, -1 if none).

    Examples
    --------
    >>> from stopwise.traces.tokenize import RegexTokenizer
    >>> t = "So 2+2 = 4. The answer is 4.\\n\\nWait, let me check. Yes."
    >>> p = text_probes(t, RegexTokenizer().tokenize(t))
    >>> p["probe_answer"], p["probe_cue"]
    (['4', '4'], ['blank_line', 'wait'])
    """
    from stopwise.answers import find_candidates

    cands = find_candidates(text)
    cand_ends = [c.end for c in cands]
    positions: list[int] = []
    answers: list[str | None] = []
    cues: list[str] = []
    j = -1
    for m in CUE_RE.finditer(text):
        c = m.start()
        while j + 1 < len(cands) and cand_ends[j + 1] <= c:
            j += 1
        ans = cands[j].answer if j >= 0 else None
        pos = tokenized.token_position(c)
        cue = m.lastgroup or "cue"
        if positions and positions[-1] == pos:
            # one probe per token position: the later cue at the same place wins
            answers[-1] = ans
            cues[-1] = cue
            continue
        positions.append(pos)
        answers.append(ans)
        cues.append(cue)
    first = tokenized.token_position(cands[0].end) if cands else -1
    if first > tokenized.n_tokens:
        first = tokenized.n_tokens
    return {
        "probe_position": positions,
        "probe_answer": answers,
        "probe_logprob": [math.nan] * len(positions),
        "probe_cost": [0] * len(positions),
        "probe_cue": cues,
        "first_candidate_position": first,
    }


#: characters read past a cue's start before it is taken as final when reading a stream: a cue
#: match is at most 20 characters, so a match starting this far before the end cannot change
STREAM_LOOKAHEAD = 32


class TextProbeScanner:
    """:func:`text_probes` over a chain that arrives token by token (the live driver's view).

    ``feed(piece)`` appends one token's text; ``probe_at(position)`` gives the
    ``(cue, answer)`` probe that :func:`text_probes` records at ``position`` of the
    whole text, or None. It is final once the text read extends
    :data:`STREAM_LOOKAHEAD` characters past the end of token ``position + 1`` (or
    the chain has ended, :meth:`close`); :meth:`ready` says whether it is.

    The cues are found with the same expression, left to right, non-overlapping, as
    on the whole text; a match is kept only once the text extends
    :data:`STREAM_LOOKAHEAD` characters past its start, so a longer cue that starts
    earlier cannot still be completed. The answer is the last candidate statement
    ending before the cue in the text read so far.

    Examples
    --------
    >>> sc = TextProbeScanner()
    >>> for piece in ["So", " the", " answer", " is", " 4", ".", "\\n\\n", "Wait", ",", " check"]:
    ...     sc.feed(piece)
    >>> sc.close()
    >>> sc.probe_at(6), sc.probe_at(7)
    (('blank_line', '4'), ('wait', '4'))
    """

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.ends: list[int] = []
        self.length = 0
        self.closed = False
        self._cursor = 0
        self._cues: dict[int, tuple[str, int]] = {}  # position -> (cue, char start); the later cue at a position wins
        self._text = ""
        self._stale = False

    @property
    def text(self) -> str:
        if self._stale:
            self._text = "".join(self.parts)
            self._stale = False
        return self._text

    def feed(self, piece: str) -> None:
        self.parts.append(piece)
        self.length += len(piece)
        self.ends.append(self.length)
        self._stale = True
        self._scan()

    def close(self) -> None:
        self.closed = True
        self._scan()

    def ready(self, position: int) -> bool:
        """Whether :meth:`probe_at` is final at ``position`` (needs token ``position + 1``)."""
        if self.closed:
            return True
        if position >= len(self.ends):
            return False
        return self.length >= self.ends[position] + STREAM_LOOKAHEAD

    def _scan(self) -> None:
        import bisect

        text = self.text
        for m in CUE_RE.finditer(text, self._cursor):
            if not self.closed and self.length - m.start() < STREAM_LOOKAHEAD:
                return  # may still grow into (or be preceded by) another cue
            pos = bisect.bisect_right(self.ends, m.start())
            self._cues[pos] = (m.lastgroup or "cue", m.start())
            self._cursor = m.end()
        # no match left in the text read: resume close to its end (a match needs its own characters)
        self._cursor = max(self._cursor, self.length - STREAM_LOOKAHEAD)

    def probe_at(self, position: int) -> tuple[str, str | None] | None:
        """``(cue, answer)`` of the probe at ``position``, or None where there is none."""
        hit = self._cues.get(position)
        if hit is None:
            return None
        cue, start = hit
        from stopwise.answers import find_candidates

        ans = None
        for c in find_candidates(self.text):
            if c.end > start:
                break
            ans = c.answer
        return cue, ans

