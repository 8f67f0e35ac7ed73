"""Early exit inside each chain plus an adaptive number of chains, certified jointly.

Chains are drawn one at a time. Inside a chain, the learned exit probe
(:class:`~stopwise.policies.learned.LearnedExit`) stops it at the first answered
probe scoring at least ``lambda``; across chains, Adaptive-Consistency's Beta
posterior over the (early) answers decides whether to draw another, stopping
once it exceeds ``c``. The answer is the vote of the early answers.

Both knobs move together along a one-dimensional *path*, declared here before
any calibration data is seen and written into the policy file: grid index
``t`` is the pair ``(lambda_t, c_t)``, from safe (index 0: ``lambda`` 0.9999,
``c`` 0.999) to aggressive. Learn-then-Test then certifies one risk on the
final answer (disagreement with the vote of every chain run to its end) along
that path with fixed-sequence testing, so no family-wise correction is needed.

The probe model is fitted on the set's training role exactly as for
``learned_exit`` (those questions are left out of calibration), or given in the
settings.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import numpy as np

from stopwise.errors import ConfigError
from stopwise.policies.base import MISSING, Action, Event, Final, Finished, ProbeResult, ReplayResult, Spawn, Stop, Tokens
from stopwise.policies.learned import LearnedExit, LearnedExitPolicy, ProbeModel
from stopwise.policies.multi import MultiChainFamily, ac_stop_probability, chain_matrix
from stopwise.policies.voting import tally, vote_prefixes

__all__ = ["PATH", "CombinedExit"]

#: (lambda, c) from safe to aggressive; every lambda is on LearnedExit's grid
PATH: tuple[tuple[float, float], ...] = (
    (0.9999, 0.999), (0.999, 0.999), (0.995, 0.995), (0.99, 0.995), (0.98, 0.99), (0.97, 0.99), (0.95, 0.98),
    (0.93, 0.98), (0.9, 0.95), (0.86, 0.95), (0.8, 0.9), (0.7, 0.9), (0.6, 0.8), (0.5, 0.8), (0.4, 0.7),
    (0.3, 0.7), (0.2, 0.6), (0.1, 0.6), (0.0, 0.6),
)  # fmt: skip


class _CombinedPolicy:
    def __init__(self, model: ProbeModel, lam: float, c: float, n_chains: int, cues, every) -> None:  # noqa: ANN001
        self.model, self.lam, self.c, self.n = model, float(lam), float(c), n_chains
        self.cues, self.every = cues, every
        self.chains: dict[int, LearnedExitPolicy] = {}
        self.answers: list[int] = []

    def _spawn(self) -> list[Action]:
        return [Spawn(1)]

    def start(self) -> list[Action]:
        return self._spawn() if self.n else [Final(MISSING)]

    def _chain(self, c: int) -> LearnedExitPolicy:
        if c not in self.chains:
            p = LearnedExitPolicy(self.model, self.lam, self.cues)
            p.every = self.every
            self.chains[c] = p
        return self.chains[c]

    def _chain_done(self, answer: int, pre: list[Action]) -> list[Action]:
        self.answers.append(answer)
        t = tally(self.answers)
        if ac_stop_probability(t.top, t.runner_up) > self.c or len(self.answers) >= self.n:
            return pre + [Final(t.winner)]
        return pre + self._spawn()

    def on_event(self, event: Event) -> list[Action]:
        if isinstance(event, (Tokens, ProbeResult, Finished)):
            acts = self._chain(event.chain).on_event(event)
            final = [a for a in acts if isinstance(a, Final)]
            if not final:
                return acts
            return self._chain_done(final[0].answer, [a for a in acts if isinstance(a, Stop)])
        return []


class CombinedExit(MultiChainFamily):
    """Learned exit inside each chain, Adaptive-Consistency across chains, along one declared path.

    Settings: those of ``learned_exit`` (``model``, ``groups``, ``train_fraction``,
    ``cues``, ``every``). The knob is the path index (see :data:`PATH`).
    """

    name: ClassVar[str] = "combined"
    knob: ClassVar[str] = "path_index"
    requires: ClassVar[tuple[str, ...]] = ("probe_position", "probe_class")

    def __init__(self, path=None, **exit_settings) -> None:  # noqa: ANN001, ANN003
        """``exit_settings`` are ``learned_exit``'s; ``path`` (as a policy file records it) must be :data:`PATH`."""
        if path is not None and [tuple(float(v) for v in p) for p in path] != [tuple(p) for p in PATH]:
            raise ConfigError("combined: the policy file's (lambda, c) path is not this stopwise's declared path",
                              hint="recalibrate with this version of stopwise")
        self.exit = LearnedExit(**exit_settings)
        grid = [round(float(g), 6) for g in self.exit.grid]
        bad = [lam for lam, _ in PATH if round(lam, 6) not in grid]
        if bad:  # pragma: no cover - a code invariant
            raise ConfigError(f"combined: path thresholds {bad} are not on learned_exit's grid")

    @property
    def grid(self) -> np.ndarray:
        return np.arange(len(PATH), dtype=np.int64)

    def settings(self) -> dict:
        return {**self.exit.settings(), "path": [list(p) for p in PATH]}

    def __repr__(self) -> str:
        return f"CombinedExit({self.exit!r})"

    def train(self, ts) -> CombinedExit:  # noqa: ANN001
        if self.exit.model is not None:
            return self
        out = copy.copy(self)
        out.exit = self.exit.train(ts)
        return out

    def training_mask(self, ts):  # noqa: ANN001, ANN201
        return self.exit.training_mask(ts)

    def supports(self, ts) -> str | None:  # noqa: ANN001
        return self.exit.supports(ts) or super().supports(ts)

    def _policy(self, value, n_chains: int):  # noqa: ANN001, ANN202
        lam, c = PATH[int(value)]
        return _CombinedPolicy(self.exit._need_model(), lam, c, n_chains, self.exit.cues, self.exit.every)

    def replay(self, ts) -> ReplayResult:  # noqa: ANN001
        single = self.exit.replay(ts)  # per chain, every lambda of learned_exit's grid
        lam_index = {round(float(g), 6): j for j, g in enumerate(single.grid)}
        cm = chain_matrix(ts)
        q, w = cm.klass.shape
        g = len(PATH)
        answer = np.empty((q, g), dtype=np.int32)
        tokens = np.empty((q, g), dtype=np.int64)
        probe = np.empty((q, g), dtype=np.int64)
        latency = np.empty((q, g), dtype=np.int64)
        chains = np.empty((q, g), dtype=np.int32)
        col = np.arange(w)
        within = col[None, :] < cm.counts[:, None]
        last = col[None, :] == cm.counts[:, None] - 1
        for t, (lam, c) in enumerate(PATH):
            j = lam_index[round(lam, 6)]
            klass = np.full((q, w), MISSING, dtype=np.int64)
            tok = np.zeros((q, w), dtype=np.int64)
            prb = np.zeros((q, w), dtype=np.int64)
            if ts.n_chains:
                klass[cm.row, cm.col] = single.answer[:, j]
                tok[cm.row, cm.col] = single.tokens[:, j]
                prb[cm.row, cm.col] = single.probe_tokens[:, j]
            votes = vote_prefixes(klass)
            stop = within & ((ac_stop_probability(votes.top, votes.runner_up) > c) | last)
            m = np.where(cm.counts > 0, np.argmax(stop, axis=1) + 1 if w else 0, 0)
            cum_tok = np.cumsum(tok, axis=1)
            # sequential chains: chain k starts when the k-1 before it have stopped
            lat = np.maximum.accumulate(cum_tok + prb, axis=1) if w else tok
            answer[:, t] = cm.at(votes.winner, m, MISSING)
            tokens[:, t] = cm.at(cum_tok, m)
            probe[:, t] = cm.at(np.cumsum(prb, axis=1), m)
            latency[:, t] = cm.at(lat, m)
            chains[:, t] = m
        a_full, t_full, p_full, l_full, c_full = self.full(ts)
        ref = np.asarray(ts.questions.column("reference_class").to_numpy(zero_copy_only=False), dtype=np.int32)
        return ReplayResult(
            family=self.name, grid=self.grid, unit="question", unit_question=np.arange(q, dtype=np.int64),
            answer=answer, abstained=np.zeros((q, g), dtype=bool), tokens=tokens, probe_tokens=probe,
            latency=latency, chains=chains, answer_full=a_full, tokens_full=t_full, probe_tokens_full=p_full,
            latency_full=l_full, chains_full=c_full, correct_class=ref,
            notes=[f"path (lambda, c): {list(PATH)}"],
        )
