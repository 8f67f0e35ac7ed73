"""The learned exit probe: stop a chain where a ridge-regularized logistic probe says its answer is final.

After LYNX (a light probe at cue tokens, trained with labels from forced exits,
wrapped in conformal calibration) and RAPTOR (ridge-regularized logistic
probes). At every probe of a chain, :mod:`stopwise.policies.features` gives a
vector (probe-answer agreement, position, cues, and where the set has them the
forced answer's probability and token confidence/entropy windows). The target
needs no labels: "the forced answer here is in the class of the chain's
full-compute answer". The exit rule is "stop at the first probe with an answer
whose score reaches lambda"; lambda is the family's knob, certified by the
calibration module like any other.

Roles
-----
The model is fitted on the *training role* of a trace set only (questions whose
hashed split score is below :data:`~stopwise.stats.split.TRAIN_FRACTION`; the
same ids in every set), with the ridge penalty chosen by cross-validation
grouped by question. Those questions are then left out of calibration
(:meth:`LearnedExit.training_mask`), and the test half is untouched, so no
question is in two roles. A fitted model is part of the family's settings and
so of the policy file: it can be reused on another set (transfer), where the
threshold is always re-certified on that set's calibration role.

Examples
--------
>>> from stopwise.traces.synthetic import synthetic_trace_set
>>> ts = synthetic_trace_set(60, 2, mean_tokens=200, seed=1)
>>> fam = LearnedExit().train(ts)
>>> fam.model.features[:2]
('has_answer', 'agree_prev4')
>>> res = fam.replay(ts)
>>> res.answer.shape == (ts.n_chains, len(fam.grid))
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from stopwise.errors import ConfigError
from stopwise.policies.base import MISSING, Action, Event, ProbeResult, Tokens
from stopwise.policies.features import FEATURE_GROUPS, ChainFeatures, available_groups, feature_names, set_features
from stopwise.policies.single import ProbeArrays, SingleChainFamily, _ChainPolicy, probe_arrays
from stopwise.stats.split import TRAIN_FRACTION, training_mask

__all__ = ["LearnedExit", "LearnedExitPolicy", "ProbeModel", "probe_labels", "train_probe_model"]

#: inverse ridge penalties tried by the grouped cross-validation
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
MODEL_FORMAT = "stopwise-probe-model-v1"


@dataclass(frozen=True)
class ProbeModel:
    """A fitted logistic probe: standardization, coefficients, and where it came from."""

    groups: tuple[str, ...]
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    C: float
    trained_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.features)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == n):
            raise ConfigError(f"probe model: {n} features but {len(self.mean)}/{len(self.scale)}/{len(self.coef)} mean/scale/coef values")
        if tuple(self.features) != feature_names(self.groups):
            raise ConfigError(
                f"probe model: its features do not match the schema of groups {list(self.groups)}",
                hint="the model was written by another stopwise version; retrain it",
            )
        object.__setattr__(self, "_mean", np.asarray(self.mean, dtype=np.float64))
        object.__setattr__(self, "_scale", np.asarray(self.scale, dtype=np.float64))
        object.__setattr__(self, "_coef", np.asarray(self.coef, dtype=np.float64))

    def logit(self, x: Sequence[float]) -> float:
        """The linear score of one feature vector (the same arithmetic in both drivers)."""
        z = (np.asarray(x, dtype=np.float64) - self._mean) / self._scale  # type: ignore[attr-defined]
        return float(np.dot(z, self._coef)) + self.intercept  # type: ignore[attr-defined]

    def score(self, x: Sequence[float]) -> float:
        """Probability that the forced answer at this probe is the chain's final answer."""
        z = self.logit(x)
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def scores(self, X: np.ndarray) -> np.ndarray:
        """:meth:`score` of every row of ``X`` (row by row: the same arithmetic as the event-driven policy)."""
        return np.array([self.score(x) for x in X], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = MODEL_FORMAT
        for k in ("groups", "features", "mean", "scale", "coef"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeModel:
        if not isinstance(d, dict) or d.get("format") != MODEL_FORMAT:
            raise ConfigError(
                "learned_exit setting 'model' is not a probe model",
                hint=f"expected a mapping with format '{MODEL_FORMAT}', as written in a policy file's settings",
            )
        try:
            return cls(
                groups=tuple(d["groups"]), features=tuple(d["features"]), mean=tuple(map(float, d["mean"])),
                scale=tuple(map(float, d["scale"])), coef=tuple(map(float, d["coef"])),
                intercept=float(d["intercept"]), C=float(d["C"]), trained_on=dict(d.get("trained_on") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"learned_exit setting 'model' is malformed: {exc}") from exc


def probe_labels(ts, pa: ProbeArrays) -> np.ndarray:  # noqa: ANN001
    """The probe's target per probe of ``pa``: 1 where the probe's answer is its chain's final answer."""
    final = np.asarray(ts.column("answer_class", fill=MISSING), dtype=np.int64)
    return ((pa.klass == final[pa.chain]) & (pa.klass != MISSING)).astype(np.int64)


def train_probe_model(
    sets,  # noqa: ANN001 - TraceSet or a list of them
    *,
    groups: Iterable[str] | None = None,
    cues: Iterable[str] | None = None,
    every: int | None = None,
    fraction: float = TRAIN_FRACTION,
    folds: int = 5,
) -> ProbeModel:
    """Fit the probe on the training role of ``ts`` (ridge logistic, penalty by grouped CV).

    Parameters
    ----------
    sets
        One trace set, or several (pooled: transfer training). Only their
        questions with split score below ``fraction`` are used; the model
        records those question ids so that :meth:`LearnedExit.training_mask`
        can leave them out of calibration wherever the model is used.
    groups
        Feature groups to use; default every group all the sets can feed.
    cues, every
        The probe filter the policy will use (features see only those probes).
    fraction
        Training role: questions with split score below this. Use 1.0 only to
        train on sets whose questions you will not calibrate or test on (transfer).
    folds
        Cross-validation folds, grouped by question.

    Raises
    ------
    ConfigError
        If the set cannot feed a requested group, or its training role has too
        few questions or only one label class.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import GroupKFold

    sets = list(sets) if isinstance(sets, (list, tuple)) else [sets]
    have = tuple(g for g in FEATURE_GROUPS if all(g in available_groups(t) for t in sets))
    groups = tuple(g for g in FEATURE_GROUPS if g in (set(groups) if groups is not None else set(have)))
    names = ", ".join(t.name for t in sets)
    missing = [g for g in groups if g not in have]
    if missing:
        raise ConfigError(f"trace set(s) {names} cannot feed feature groups {missing}", hint=f"together they have {list(have)}")
    if "probe" not in groups:
        raise ConfigError("the learned exit probe needs the 'probe' feature group")
    Xs, ys, qs, ids = [], [], [], set()
    for t in sets:
        qids = t.questions.column("question_id").to_pylist()
        train_q = training_mask(qids, fraction)
        pa = probe_arrays(t, cues, every)
        qi = np.asarray(t.question_index, dtype=np.int64)[pa.chain]
        # the rule only ever stops at a probe with an answer: fit on those
        rows = np.flatnonzero(train_q[qi] & (pa.klass != MISSING))
        if len(rows) == 0:
            continue
        Xs.append(set_features(t, pa, groups)[rows])
        ys.append(probe_labels(t, pa)[rows])
        qs.append(np.asarray([qids[i] for i in qi[rows]], dtype=object))
        ids.update(qids[i] for i in np.flatnonzero(train_q))
    n_q = len({q for arr in qs for q in arr})
    if n_q < 2:
        raise ConfigError(
            f"trace set(s) {names} have {n_q} training-role questions with answered probes; the learned probe needs at least 2",
            hint=f"the training role is the questions with split score < {fraction}; use a larger set or pass a trained model",
        )
    X, y = np.concatenate(Xs), np.concatenate(ys)
    _, qgroups = np.unique(np.concatenate(qs), return_inverse=True)
    if len(np.unique(y)) < 2:
        raise ConfigError(f"trace set(s) {names}: every training probe has the same label ({int(y[0])}); nothing to learn")
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    Z = (X - mean) / scale
    k = int(min(folds, len(np.unique(qgroups))))
    splits = list(GroupKFold(n_splits=k).split(Z, y, qgroups))
    cv_loss = []
    for c in C_GRID:  # the ridge penalty with the best held-out log loss, folds grouped by question
        total = 0.0
        for tr, te in splits:
            if len(np.unique(y[tr])) < 2:
                total += math.inf
                continue
            m = LogisticRegression(C=c, max_iter=5000).fit(Z[tr], y[tr])
            total += log_loss(y[te], m.predict_proba(Z[te])[:, 1], labels=[0, 1]) * len(te)
        cv_loss.append(total / len(y))
    best = int(np.argmin(cv_loss))
    clf = LogisticRegression(C=C_GRID[best], max_iter=5000).fit(Z, y)
    return ProbeModel(
        groups=groups,
        features=feature_names(groups),
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        coef=tuple(float(v) for v in clf.coef_[0]),
        intercept=float(clf.intercept_[0]),
        C=float(C_GRID[best]),
        trained_on={
            "trace_sets": [{"name": t.name, "content_hash": t.content_hash} for t in sets], "questions": n_q,
            "probes": int(len(y)), "positive_share": float(y.mean()), "train_fraction": float(fraction),
            "question_ids": sorted(ids),
            "cv_folds": k, "cv_log_loss": float(cv_loss[best]), "cues": None if cues is None else sorted(cues), "every": every,
        },
    )


class LearnedExitPolicy(_ChainPolicy):
    """Feed every token and probe to the feature state; stop at the first answered probe scoring >= threshold."""

    def __init__(self, model: ProbeModel, threshold: float, cues: tuple[str, ...] | None) -> None:
        super().__init__(cues)
        self.model = model
        self.threshold = float(threshold)
        self.features = ChainFeatures(model.groups)

    def on_event(self, event: Event) -> list[Action]:
        if isinstance(event, Tokens):
            self.features.add_token(event.logprob, event.confidence, event.entropy)
        return super().on_event(event)

    def fires(self, probe: ProbeResult) -> bool:
        x = self.features.at_probe(probe.position, probe.answer, probe.logprob, probe.cue)
        if probe.answer == MISSING:
            return False
        return self.model.score(x) >= self.threshold


class LearnedExit(SingleChainFamily):
    """Learned exit probe: stop at the first answered probe whose score reaches ``threshold``.

    Settings: ``model`` (a fitted :class:`ProbeModel` as a dict, or None to fit
    one with :meth:`train`), ``groups`` (feature groups to fit with; default all
    the set has), ``train_fraction``, ``cues`` and ``every``. Grid: thresholds 0.9999
    down to 0 (0: stop at the first probe with an answer).
    """

    name: ClassVar[str] = "learned_exit"
    knob: ClassVar[str] = "threshold"
    _grid: ClassVar[tuple] = (
        0.9999, 0.9995, 0.999, 0.998, 0.997, 0.995, 0.993, 0.99, 0.985, 0.98, 0.975, 0.97, 0.96, 0.95,
        0.94, 0.93, 0.92, 0.9, 0.88, 0.86, 0.84, 0.82, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5,
        0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.02, 0.0,
    )  # fmt: skip

    def __init__(
        self,
        cues: Iterable[str] | str | None = None,
        model: ProbeModel | dict | None = None,
        groups: Iterable[str] | None = None,
        train_fraction: float = TRAIN_FRACTION,
        every: int | None = None,
    ) -> None:
        super().__init__(cues, every)
        self.model = ProbeModel.from_dict(model) if isinstance(model, dict) else model
        self.groups = None if groups is None else tuple(groups)
        unknown = [g for g in (self.groups or ()) if g not in FEATURE_GROUPS]
        if unknown:
            raise ConfigError(f"learned_exit: unknown feature groups {unknown}", hint=f"known: {list(FEATURE_GROUPS)}")
        if not 0.0 < float(train_fraction) < 0.5:
            raise ConfigError(f"learned_exit: train_fraction must be in (0, 0.5), got {train_fraction}",
                              hint="the training role must lie inside the calibration half (split score < 0.5)")
        self.train_fraction = float(train_fraction)

    def settings(self) -> dict:
        return {
            **super().settings(),
            "model": None if self.model is None else self.model.to_dict(),
            "groups": None if self.groups is None else list(self.groups),
            "train_fraction": self.train_fraction,
        }

    def __repr__(self) -> str:
        sets = [] if self.model is None else [t.get("name") for t in self.model.trained_on.get("trace_sets", [])]
        trained = "untrained" if self.model is None else f"trained on {', '.join(map(str, sets))}"
        return f"LearnedExit(cues={self.cues!r}, {trained})"

    def train(self, ts) -> LearnedExit:  # noqa: ANN001
        if self.model is not None:
            return self
        model = train_probe_model(ts, groups=self.groups, cues=self.cues, every=self.every, fraction=self.train_fraction)
        return LearnedExit(cues=self.cues, model=model, groups=self.groups, train_fraction=self.train_fraction, every=self.every)

    def training_mask(self, ts) -> np.ndarray:  # noqa: ANN001
        """The questions of ``ts`` the model was fitted on (by id), plus its training role when untrained."""
        qids = ts.questions.column("question_id").to_pylist()
        if self.model is None:
            return training_mask(qids, self.train_fraction)
        trained = set(self.model.trained_on.get("question_ids") or ())
        return np.fromiter((q in trained for q in qids), dtype=bool, count=len(qids))

    def supports(self, ts) -> str | None:  # noqa: ANN001
        reason = super().supports(ts)
        if reason is not None:
            return reason
        have = set(available_groups(ts))
        need = set(self.model.groups if self.model is not None else (self.groups or ()))
        missing = sorted(need - have)
        if missing:
            return f"its probe model needs feature groups {missing}, which this set lacks"
        return None

    def _need_model(self) -> ProbeModel:
        if self.model is None:
            raise ConfigError("learned_exit has no fitted model", hint="call .train(trace_set) or pass model= from a policy file")
        return self.model

    def _policy(self, value):  # noqa: ANN001, ANN202
        return LearnedExitPolicy(self._need_model(), value, self.cues)

    def _prepare(self, ts, pa: ProbeArrays) -> np.ndarray:  # noqa: ANN001
        model = self._need_model()
        X = set_features(ts, pa, model.groups)
        return model.scores(X)

    def _stop(self, pa: ProbeArrays, value, prep=None) -> np.ndarray:  # noqa: ANN001
        return pa.first((pa.klass != MISSING) & (prep >= float(value)))
