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
