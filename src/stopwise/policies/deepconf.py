"""DeepConf online: warm-up chains set a confidence threshold; later chains whose sliding-window token confidence
drops below it are killed; the answer is the confidence-weighted vote.

A multi-chain family on the shared machinery of :mod:`stopwise.policies.multi` (its conventions hold here: chains in
``sample_id`` order, the replay clock, the grid from safe to aggressive, the event policy equal to the sweep).

References
----------
.. [1] Fu et al., "Deep Think with Confidence" (DeepConf), arXiv:2508.15260.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from stopwise.errors import ConfigError
from stopwise.policies.base import (
    MISSING,
    Action,
    Event,
    Final,
    Finished,
    Spawn,
    Stop,
    Tokens,
)
from stopwise.policies.multi import (
    ChainMatrix,
    MultiChainFamily,
    _no_abstention,
    percentile_rows,
)
from stopwise.policies.voting import vote, vote_rows

__all__ = ["DeepConfOnline", "training_role", "training_role_median"]


def training_role(ts) -> np.ndarray:  # noqa: ANN001 - TraceSet
    """The questions of the training role (:func:`stopwise.stats.split.training_mask`), a mask over questions."""
    from stopwise.stats.split import training_mask

    return training_mask(ts.questions.column("question_id").to_pylist())


def training_role_median(ts, per_chain: np.ndarray) -> float | None:  # noqa: ANN001 - TraceSet
    """Median of ``per_chain`` (one value per chain, e.g. its length) over the chains of the training role's
    questions: a setting read off data that never calibrates. None when the role holds no chain (a tiny set)."""
    if not ts.n_chains:
        return None
    train = training_role(ts)[np.asarray(ts.question_index)]
    return float(np.median(np.asarray(per_chain)[train])) if train.any() else None


# --- DeepConf online -------------------------------------------------------------------------
#: Token confidences are summed as integers in units of 2**-24 so that the event
#: policy and the sweep compute bit-identical window means (float sums would
#: depend on summation order). Values are clipped to +-2**20 first.
_CONF_SCALE = float(2**24)
_CONF_CLIP = float(2**20)


def _quantize(conf: np.ndarray) -> np.ndarray:
    c = np.asarray(conf, dtype=np.float64)
    return np.where(np.isnan(c), 0.0, np.rint(np.clip(c, -_CONF_CLIP, _CONF_CLIP) * _CONF_SCALE)).astype(np.int64)


class _DeepConfPolicy:
    def __init__(self, percentile: float, n_chains: int, window: int, warmup: int) -> None:
        self.q = float(percentile)
        self.n = n_chains
        self.window = window
        self.n_warm = min(warmup, n_chains)
        self.answers = [MISSING] * n_chains
        self.scores = [0.0] * n_chains
        self.seen = [False] * n_chains
        self.sums: list[list[int]] = [[0] for _ in range(n_chains)]
        self.warm_done = 0
        self.live_post = 0
        self.threshold = -math.inf

    def start(self) -> list[Action]:
        return [Spawn(self.n_warm)] if self.n_warm else [Final(MISSING)]

    def _decide(self) -> list[Action]:
        return [Final(vote(self.answers, self.scores))]

    def on_event(self, event: Event) -> list[Action]:
        c = event.chain
        if isinstance(event, Tokens):
            s = self.sums[c]
            s.append(s[-1] + int(_quantize(event.confidence)))
            t = event.position
            span = min(t, self.window)
            g = float(s[t] - s[t - span]) / span / _CONF_SCALE
            self.scores[c] = g if not self.seen[c] else min(self.scores[c], g)
            self.seen[c] = True
            if c >= self.n_warm and g < self.threshold:
                self.scores[c] = 0.0
                self.live_post -= 1
                return [Stop(c, MISSING)] + (self._decide() if self.live_post == 0 else [])
            return []
        if isinstance(event, Finished):
            self.answers[c] = event.answer
            if c < self.n_warm:
                self.warm_done += 1
                if self.warm_done < self.n_warm:
                    return []
                if self.n == self.n_warm:
                    return self._decide()
                if self.q > 0:
                    self.threshold = float(percentile_rows(np.asarray([self.scores[: self.n_warm]]), self.q)[0])
                self.live_post = self.n - self.n_warm
                return [Spawn(self.live_post)]
            self.live_post -= 1
            return self._decide() if self.live_post == 0 else []
        return []


class DeepConfOnline(MultiChainFamily):
    """DeepConf (online): a warm-up sets a confidence bar; later chains are killed when they drop below it.

    Token confidence ``C_i`` is the ``token_confidence`` column (DeepConf's
    ``-mean`` of the top-k logprobs; a missing value counts as 0). The *window
    confidence* after ``t`` tokens is the mean of ``C`` over the last
    ``window`` tokens, or over all ``t`` tokens so far while ``t < window``
    (so a chain shorter than the window is judged by its running mean). A
    chain's *score* is its lowest window confidence over the tokens it
    generated (0 for a chain without tokens).

    The first ``warmup`` chains are drawn at once and run to their end; the bar
    ``s`` is percentile ``q`` of their scores (``q = 0`` means no bar at all:
    nothing is ever killed). Then every remaining logged chain is drawn at once
    and each is stopped the first time its window confidence falls below ``s``
    (its answer is discarded). Warm-up chains and the surviving chains vote,
    each weighted by its score. A question with at most ``warmup`` chains is
    just the weighted vote of its chains.

    Grid: ``q`` = 0, 10, 30, 50, 70, 90 (DeepConf-high is 10, DeepConf-low 90).
    Full compute is the weighted vote over every chain run to its end, which is
    also grid point 0's answer.

    Parameters
    ----------
    window : int
        Sliding-window length in tokens (DeepConf: 2048).
    warmup : int
        Warm-up chains per question (DeepConf: 16).
    """

    name: ClassVar[str] = "deepconf_online"
    knob: ClassVar[str] = "percentile"
    requires: ClassVar[tuple[str, ...]] = ("token_confidence",)
    _grid: ClassVar[tuple] = (0, 10, 30, 50, 70, 90)

    def __init__(self, window: int = 2048, warmup: int = 16) -> None:
        if int(window) < 1:
            raise ConfigError(f"deepconf_online: window must be >= 1 token, got {window}")
        if int(warmup) < 1:
            raise ConfigError(f"deepconf_online: warmup must be >= 1 chain, got {warmup}")
        self.window = int(window)
        self.warmup = int(warmup)
        self.window_from_training = False  # set by fit_to when the window was read off the training role

    def settings(self) -> dict:
        return {"window": self.window, "warmup": self.warmup}

    def supports(self, ts) -> str | None:  # noqa: ANN001
        reason = super().supports(ts)
        if reason is not None:
            return reason
        most = int(np.max(ts.chain_counts)) if ts.n_questions else 0
        if most <= self.warmup:
            return (
                f"needs at least warmup+1 = {self.warmup + 1} chains per question (has at most {most}); "
                f"lower 'warmup' or collect more chains"
            )
        return None

    def fit_to(self, ts):  # noqa: ANN001, ANN201
        """Sets with fewer chains or shorter chains than DeepConf's (16 warm-up chains, 2048-token
        windows over chains of many thousand tokens): warm up on half the chains, and use windows
        of 1/8 of the median chain (at least 16 tokens).

        The median chain is read off the questions of the training role only
        (:func:`stopwise.stats.split.training_mask`), never the calibration or test questions, and
        where it sets the window those questions are left out of calibration
        (:meth:`training_mask`), as for any family that learns from data."""
        if not ts.n_questions or not ts.has("token_confidence"):
            return self
        most = int(np.max(ts.chain_counts))
        warmup = self.warmup if most > self.warmup else max(1, most // 2)
        med = training_role_median(ts, np.asarray(ts.column("n_tokens", fill=0)) if ts.n_chains else np.zeros(0))
        if med is None:  # no training-role chain (a tiny set): nothing to read the window off, DeepConf's own stays
            med = float(8 * self.window)
        window = self.window if med >= 8 * self.window else max(16, int(med // 8))
        if (warmup, window) == (self.warmup, self.window) or most < 4:
            return self
        fitted = type(self)(window=window, warmup=warmup)
        fitted.window_from_training = window != self.window
        return fitted

    def training_mask(self, ts) -> np.ndarray | None:  # noqa: ANN001
        """The training role, where the window was read off it (:meth:`fit_to`); else None."""
        return training_role(ts) if self.window_from_training else None

    def _policy(self, value, n_chains: int):  # noqa: ANN001, ANN202
        return _DeepConfPolicy(value, n_chains, self.window, self.warmup)

    def _context(self, ts, cm: ChainMatrix) -> dict:  # noqa: ANN001
        """Window confidence of every token of every chain, and each chain's score."""
        n_tok = np.asarray(ts.column("n_tokens", fill=0), dtype=np.int64) if ts.n_chains else np.zeros(0, np.int64)
        n_chains = len(n_tok)
        tok_off = np.concatenate([[0], np.cumsum(n_tok)]).astype(np.int64)
        total = int(tok_off[-1])
        chain = np.repeat(np.arange(n_chains, dtype=np.int64), n_tok)
        local = np.arange(total, dtype=np.int64) - tok_off[chain]  # 0-based position
        conf = np.full(total, np.nan)
        if ts.has("token_confidence"):
            off, vals = ts.list_column("token_confidence")
            vals = np.asarray(vals, dtype=np.float64)
            lens = np.diff(off)
            ok = local < lens[chain]
            conf[ok] = vals[off[chain[ok]] + local[ok]]
        # exact integer prefix sums (int64 wrap-around cancels in the differences)
        csum = np.cumsum(_quantize(conf))
        csum0 = np.concatenate([[0], csum])
        t = local + 1
        span = np.minimum(t, self.window)
        idx = np.arange(total, dtype=np.int64)
        window_sum = csum0[idx + 1] - csum0[idx + 1 - span]
        g = window_sum.astype(np.float64) / span / _CONF_SCALE
        score = np.zeros(n_chains)
        has = n_tok > 0
        if total:
            score[has] = np.minimum.reduceat(g, tok_off[:-1][has])
        weights = np.zeros(cm.klass.shape)
        weights[cm.row, cm.col] = score
        # warm-up bars per question (questions with more chains than the warm-up)
        q = len(cm.counts)
        post = cm.counts > self.warmup
        warm_scores = weights[post, : self.warmup] if cm.width >= self.warmup else np.zeros((0, self.warmup))
        return {
            "g": g,
            "chain": chain,
            "local": local,
            "n_tok": n_tok,
            "weights": weights,
            "post": post,
            "warm_scores": warm_scores,
            "q": q,
        }

    def _full_answer(self, ts, cm: ChainMatrix, ctx) -> np.ndarray:  # noqa: ANN001
        return vote_rows(cm.klass, ctx["weights"])

    def _sweep(self, cm: ChainMatrix, value, ctx) -> tuple[np.ndarray, ...]:  # noqa: ANN001
        q = ctx["q"]
        post = ctx["post"]
        n_tok = ctx["n_tok"]
        warm = min(self.warmup, cm.width)
        bar = np.full(q, -np.inf)
        if float(value) > 0 and post.any():
            bar[post] = percentile_rows(ctx["warm_scores"], float(value))
        # reached[j]: tokens chain row j generates; killed[j]: stopped below the bar
        reached = n_tok.copy()
        killed = np.zeros(len(n_tok), dtype=bool)
        is_post = cm.col >= self.warmup
        chain = ctx["chain"]
        hit = (ctx["g"] < bar[cm.row][chain]) & is_post[chain]
        idx = np.flatnonzero(hit)
        if len(idx):
            ch = chain[idx]
            lead = np.ones(len(idx), dtype=bool)
            lead[1:] = ch[1:] != ch[:-1]
            reached[ch[lead]] = ctx["local"][idx[lead]] + 1
            killed[ch[lead]] = True
        klass = cm.klass.copy()
        weights = ctx["weights"].copy()
        klass[cm.row[killed], cm.col[killed]] = MISSING
        weights[cm.row[killed], cm.col[killed]] = 0.0
        answer = vote_rows(klass, weights)
        reach = np.zeros(cm.klass.shape, dtype=np.int64)
        reach[cm.row, cm.col] = reached
        tokens = reach.sum(axis=1)
        warm_len = reach[:, :warm].max(axis=1) if warm else np.zeros(q, dtype=np.int64)
        post_len = reach[:, warm:].max(axis=1) if cm.width > warm else np.zeros(q, dtype=np.int64)
        latency = warm_len + np.where(post, post_len, 0)
        return answer, _no_abstention(q), tokens, latency, cm.counts.copy()
