"""What a chain looks like at a probe: the feature vector of the learned exit probe.

One incremental extractor, :class:`ChainFeatures`, serves both drivers. The
event policy feeds it ``Tokens`` and ``ProbeResult`` events as they arrive; the
vectorized sweep hands it a logged chain's token arrays at once and asks for
the vector at each logged probe. Both read the same slices with the same numpy
reductions, so the vectors (and the decisions made from them) are identical by
construction; a test checks it against the reference driver.

Every feature is computable at run time from what the policy has seen so far:
nothing looks at the chain's future, its length or its final answer.

Feature groups
--------------
``probe`` (every set with probes)
    whether the probe gave an answer; the share of the previous 4 probes that
    agree with it; the length of its run of equal answers; how many distinct
    answers and how many answer changes the chain has shown; log position;
    tokens since the first answer and since the current answer appeared; the
    probe's cue (a transition word such as wait/hmm/but/alternatively, or a
    blank line); the share of transition cues among the last 8 probes; the
    number of probes so far, of probes with an answer, and of probes since the
    first answer; whether the answer is still the first one given.
``probe_logprob`` (sets whose probes carry the forced answer's logprob)
    the forced answer's probability, and its mean and minimum over the last
    3 probes.
``token`` (sets with per-token chosen logprobs and DeepConf token confidence)
    token confidence mean over the last 32 and 128 tokens, its minimum over
    the last 32, its slope (last 32 minus the 32 before), the chosen-token
    logprob mean over the last 32, and DeepConf's trace-level "lowest group
    confidence": the lowest mean over every 32-token window so far.
``entropy`` (sets with the full-vocabulary entropy per token)
    entropy mean over the last 32 and 128 tokens and maximum over the last 32;
    the rate of high-entropy tokens (> 2 nats, the "forking" tokens of path
    deviation monitoring) since the previous probe and over the last 128.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from stopwise.policies.base import MISSING

__all__ = [
    "FEATURE_GROUPS",
    "HIGH_ENTROPY_NATS",
    "TRANSITION_CUES",
    "ChainFeatures",
    "available_groups",
    "feature_names",
    "set_features",
]

#: probe cues that mark a transition in the reasoning (DEER's and LYNX's cue words)
TRANSITION_CUES = frozenset({"wait", "hmm", "alternatively", "but", "however", "check"})
#: entropy above which a token counts as a high-entropy "forking" token
HIGH_ENTROPY_NATS = 2.0

FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "probe": (
        "has_answer", "agree_prev4", "log_run", "log_distinct", "log_changes", "log_position",
        "log_since_first_answer", "log_since_change", "cue_transition", "cue_blank_line",
        "transitions_last8", "log_probes", "log_answered_probes", "log_probes_since_first_answer",
        "agrees_with_first_answer",
    ),
    "probe_logprob": ("probe_prob", "probe_prob_mean3", "probe_prob_min3"),
    "token": ("conf_mean32", "conf_mean128", "conf_min32", "conf_slope", "logprob_mean32", "conf_lowest_group32"),
    "entropy": ("entropy_mean32", "entropy_mean128", "entropy_max32", "high_entropy_rate_since_probe", "high_entropy_rate128"),
}  # fmt: skip

#: trace-set columns each group needs
GROUP_COLUMNS: dict[str, tuple[str, ...]] = {
    "probe": ("probe_position", "probe_class"),
    "probe_logprob": ("probe_logprob",),
    "token": ("token_confidence", "token_logprobs"),
    "entropy": ("entropy",),
}


def feature_names(groups: Iterable[str]) -> tuple[str, ...]:
    """The feature names of ``groups``, in the canonical group order."""
    wanted = set(groups)
    return tuple(n for g, names in FEATURE_GROUPS.items() if g in wanted for n in names)


def available_groups(ts) -> tuple[str, ...]:  # noqa: ANN001 - TraceSet
    """The feature groups trace set ``ts`` can feed (logprob groups need finite values, not NaN)."""
    out = []
    for g, cols in GROUP_COLUMNS.items():
        if not all(ts.has(c) for c in cols):
            continue
        if g == "probe_logprob":
            _, lp = ts.list_column("probe_logprob")
            if not np.isfinite(np.asarray(lp, dtype=np.float64)).any():
                continue
        out.append(g)
    return tuple(out)


def _finite(x: np.ndarray) -> np.ndarray:
    return x[~np.isnan(x)]


def _mean(x: np.ndarray) -> float:
    """Mean of the non-NaN values (a missing scalar is skipped, in both drivers alike); 0 if none."""
    x = _finite(x)
    return float(np.mean(x)) if len(x) else 0.0


def _min(x: np.ndarray) -> float:
    x = _finite(x)
    return float(np.min(x)) if len(x) else 0.0


def lowest_window_mean(x: np.ndarray, window: int) -> float:
    """Lowest mean of ``window`` consecutive non-NaN values (the mean of all while fewer); 0 if none."""
    x = _finite(np.asarray(x, dtype=np.float64))
    if len(x) == 0:
        return 0.0
    if len(x) <= window:
        return float(np.mean(x))
    c = np.concatenate([[0.0], np.cumsum(x)])
    return float(np.min(c[window:] - c[:-window]) / window)


def _max(x: np.ndarray) -> float:
    x = _finite(x)
    return float(np.max(x)) if len(x) else 0.0


class ChainFeatures:
    """The feature state of one chain.

    Event mode: construct with no arrays, call :meth:`add_token` for every
    token and :meth:`at_probe` for every probe result. Bulk mode: pass the
    chain's token arrays (float64) and call :meth:`at_probe` for its logged
    probes in order. Token scalars that a group does not use are not stored.
    """

    __slots__ = ("groups", "_lp", "_conf", "_ent", "_answers", "_cues", "_probs", "_n",
                 "_first_pos", "_first_answer", "_last_answered", "_run", "_first_index", "_answered", "_run_start", "_changes", "_seen",
                 "_last_probe_pos")

    def __init__(
        self,
        groups: Sequence[str],
        logprobs: np.ndarray | None = None,
        confidence: np.ndarray | None = None,
        entropy: np.ndarray | None = None,
    ) -> None:
        self.groups = frozenset(groups)
        self._lp = logprobs if logprobs is not None else []
        self._conf = confidence if confidence is not None else []
        self._ent = entropy if entropy is not None else []
        self._answers: list[int] = []
        self._cues: list[bool] = []
        self._probs: list[float] = []
        self._first_pos = -1
        self._first_answer = MISSING
        self._last_answered = MISSING
        self._run = 0
        self._first_index = -1
        self._answered = 0
        self._run_start = -1
        self._changes = 0
        self._seen: set[int] = set()
        self._last_probe_pos = 0

    def add_token(self, logprob: float, confidence: float, entropy: float) -> None:
        """Event mode: the chain produced one more token with these scalars."""
        if "token" in self.groups:
            self._lp.append(logprob)
            self._conf.append(confidence)
        if "entropy" in self.groups:
            self._ent.append(entropy)

    def at_probe(self, position: int, answer: int, logprob: float, cue: str | None) -> list[float]:
        """The feature vector at a probe answering ``answer`` at ``position`` (and update the state)."""
        p = int(position)
        a = int(answer)
        prev = self._answers
        # --- probe group ----------------------------------------------------------
        last_answered = self._last_answered
        if a != MISSING:
            self._last_answered = a
            if self._first_pos < 0:
                self._first_pos = p
                self._first_answer = a
                self._first_index = len(prev)
            self._answered += 1
            if last_answered != MISSING and last_answered != a:
                self._changes += 1
            if not prev or prev[-1] != a:
                self._run_start = p
            self._seen.add(a)
        run = (self._run + 1 if (prev and prev[-1] == a) else 1) if a != MISSING else 0
        self._run = run
        agree = sum(1 for x in prev[-4:] if x == a) / 4.0 if a != MISSING else 0.0
        is_transition = cue in TRANSITION_CUES
        self._cues.append(is_transition)
        prev.append(a)
        feats = [
            1.0 if a != MISSING else 0.0,
            agree,
            math.log1p(min(run, 20)),
            math.log1p(len(self._seen)),
            math.log1p(self._changes),
            math.log(max(p, 1)),
            math.log1p(p - self._first_pos) if self._first_pos >= 0 else 0.0,
            math.log1p(p - self._run_start) if a != MISSING else 0.0,
            1.0 if is_transition else 0.0,
            1.0 if cue == "blank_line" else 0.0,
            sum(self._cues[-8:]) / 8.0,
            math.log1p(len(prev)),
            math.log1p(self._answered),
            math.log1p(len(prev) - 1 - self._first_index) if self._first_index >= 0 else 0.0,
            1.0 if (a != MISSING and a == self._first_answer) else 0.0,
        ]
        # --- probe logprob group --------------------------------------------------------
        if "probe_logprob" in self.groups:
            prob = math.exp(logprob) if (a != MISSING and not math.isnan(logprob)) else 0.0
            self._probs.append(prob)
            last3 = self._probs[-3:]
            feats += [prob, sum(last3) / len(last3), min(last3)]
        # --- token windows --------------------------------------------------------------
        lo32, lo128, lo64 = max(0, p - 32), max(0, p - 128), max(0, p - 64)
        if "token" in self.groups:
            conf = self._conf
            c32 = np.asarray(conf[lo32:p], dtype=np.float64)
            c128 = np.asarray(conf[lo128:p], dtype=np.float64)
            cprev = np.asarray(conf[lo64:lo32], dtype=np.float64)
            lp32 = np.asarray(self._lp[lo32:p], dtype=np.float64)
            m32 = _mean(c32)
            feats += [
                m32,
                _mean(c128),
                _min(c32),
                m32 - _mean(cprev) if len(_finite(cprev)) else 0.0,
                _mean(lp32),
                lowest_window_mean(np.asarray(conf[:p], dtype=np.float64), 32),
            ]
        if "entropy" in self.groups:
            ent = self._ent
            e32 = np.asarray(ent[lo32:p], dtype=np.float64)
            e128 = np.asarray(ent[lo128:p], dtype=np.float64)
            lo_probe = min(self._last_probe_pos, p)
            since = np.asarray(ent[lo_probe:p], dtype=np.float64)
            feats += [
                _mean(e32),
                _mean(e128),
                _max(e32),
                float(np.count_nonzero(since > HIGH_ENTROPY_NATS)) / max(p - lo_probe, 1),
                float(np.count_nonzero(e128 > HIGH_ENTROPY_NATS)) / max(len(e128), 1),
            ]
        self._last_probe_pos = p
        return feats


def _token_arrays(ts, name: str, n_tokens: np.ndarray) -> list[np.ndarray]:  # noqa: ANN001
    """Per chain, the float64 values of list column ``name`` padded with NaN to ``n_tokens``.

    This is what the event drivers deliver: a null value, a missing list or a
    list shorter than the chain gives NaN at those positions.
    """
    out = [np.full(int(n), np.nan) for n in n_tokens]
    if name not in ts.chains.column_names or not ts.has(name):
        return out
    off, vals = ts.list_column(name)
    vals = np.asarray(vals)
    if vals.dtype == object:
        vals = np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64)
    vals = vals.astype(np.float64)
    for j, arr in enumerate(out):
        seg = vals[off[j]:off[j + 1]][: len(arr)]
        arr[: len(seg)] = seg
    return out


def set_features(ts, pa, groups: Sequence[str]) -> np.ndarray:  # noqa: ANN001 - TraceSet, ProbeArrays
    """Feature matrix (P, F) for the flattened probes ``pa`` of ``ts`` (see :func:`~stopwise.policies.single.probe_arrays`).

    Row ``i`` is the vector :class:`ChainFeatures` gives at probe ``i`` of its
    chain when fed that chain's probes in ``pa``'s order (the probes a policy
    with the same cue filter sees).
    """
    groups = tuple(groups)
    n_tok = np.asarray(ts.column("n_tokens", fill=0), dtype=np.int64) if ts.n_chains else np.zeros(0, np.int64)
    lp_arr = _token_arrays(ts, "token_logprobs", n_tok) if "token" in groups else None
    cf_arr = _token_arrays(ts, "token_confidence", n_tok) if "token" in groups else None
    en_arr = _token_arrays(ts, "entropy", n_tok) if "entropy" in groups else None
    out = np.zeros((len(pa.klass), len(feature_names(groups))), dtype=np.float64)
    position, klass, logprob, cue = pa.position.tolist(), pa.klass.tolist(), pa.logprob.tolist(), pa.cue.tolist()
    for j in range(len(pa.offsets) - 1):
        a, b = int(pa.offsets[j]), int(pa.offsets[j + 1])
        if a == b:
            continue

        cf = ChainFeatures(
            groups,
            None if lp_arr is None else lp_arr[j],
            None if cf_arr is None else cf_arr[j],
            None if en_arr is None else en_arr[j],
        )
        for i in range(a, b):
            out[i] = cf.at_probe(position[i], klass[i], logprob[i], cue[i])
    return out
