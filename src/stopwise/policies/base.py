"""The policy protocol: events in, actions out, one knob, two drivers.

A *policy* is a deterministic state machine for one question. A driver (the
replay driver over logged traces, or the live driver over backend streams)
feeds it :class:`Event` objects and carries out the :class:`Action` objects it
returns. The policy holds all stopping logic; drivers hold none.

A *family* is a policy with one scalar knob on a grid fixed before any
calibration data is seen, ordered from safe (index 0, closest to full compute)
to aggressive. ``family.make(k)`` builds the policy at grid index ``k``.
``family.replay(ts)`` computes the decisions of every grid point at once with
array code (the vectorized sweep); ``stopwise.replay.reference`` runs the
event-by-event policies and must give identical results.

Chains are numbered in draw order (``sample_id`` order in a trace set). Answers
are integer class ids (see :mod:`stopwise.traces.schema`); -1 means no answer.

Events
------
Tokens(chain, position, logprob, confidence, entropy)
    The chain produced its ``position``-th token (1-based count so far). Scalars
    are NaN when the source lacks them.
ProbeResult(chain, position, answer, logprob, cost, cue)
    The probe the policy asked for at ``position`` answered ``answer``.
Finished(chain, position, answer, finish_reason)
    The chain ended by itself after ``position`` tokens with final ``answer``.

Actions
-------
Probe(chain, cues)      ask for a probe now (only honoured at a scheduled position,
                        and only by probes whose cue is in ``cues`` unless None)
Stop(chain, answer)     stop the chain now; it returns ``answer`` (a probe's class)
Spawn(n)                draw ``n`` more chains
Final(answer)           the question's decision; the policy is done
Abstain()               decline to answer; the policy is done
Escalate(model)         hand the question to another model; the policy is done
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, Union

import numpy as np

from stopwise.errors import StopwiseError

MISSING = -1


class PolicyError(StopwiseError):
    """A policy broke the protocol (no decision before its chains ran out, an unknown action...).

    Raised by both drivers, the replay driver (:mod:`stopwise.replay.reference`) and the live one
    (:mod:`stopwise.engine.live`), which are siblings: it lives with the policies they run."""


# --- events ---------------------------------------------------------------------
@dataclass(frozen=True)
class Tokens:
    chain: int
    position: int
    logprob: float = float("nan")
    confidence: float = float("nan")
    entropy: float = float("nan")


@dataclass(frozen=True)
class ProbeResult:
    chain: int
    position: int
    answer: int
    logprob: float = float("nan")
    cost: int = 0
    cue: str | None = None


@dataclass(frozen=True)
class Finished:
    chain: int
    position: int
    answer: int
    finish_reason: str | None = None


Event = Union[Tokens, ProbeResult, Finished]


# --- actions --------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """Ask for a probe of ``chain`` at its current position.

    ``cues`` restricts which logged/scheduled probes may answer it (by their
    ``probe_cue``); ``None`` accepts any probe taken at this position.
    """

    chain: int
    cues: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Stop:
    chain: int
    answer: int


@dataclass(frozen=True)
class Spawn:
    n: int


@dataclass(frozen=True)
class Final:
    answer: int


@dataclass(frozen=True)
class Abstain:
    pass


@dataclass(frozen=True)
class Escalate:
    model: str


Action = Union[Probe, Stop, Spawn, Final, Abstain, Escalate]


class Policy(Protocol):
    """A per-question state machine. Both methods return a (possibly empty) list of actions."""

    def start(self) -> list[Action]:
        """Called once before any event; typically returns ``[Spawn(n)]``."""
        ...

    def on_event(self, event: Event) -> list[Action]:
        """Consume one event and return the actions it triggers."""
        ...


@dataclass
class ReplayResult:
    """Decisions and accounting of one family over a trace set, for every grid point.

    Shapes: ``U`` units (chains for single-chain families, questions for
    multi-chain ones), ``G`` grid points. ``unit_question[u]`` is the question
    row of unit ``u``. Column ``k`` is grid index ``k``; the ``*_full`` arrays
    are the same family with no early stopping (the full-compute decision).

    Attributes
    ----------
    answer : (U, G) int32    returned class, -1 for none or abstention
    abstained : (U, G) bool
    tokens : (U, G) int64    generated tokens of all chains, probe cost excluded
    probe_tokens : (U, G) int64   prefill + decode tokens charged for probes
    latency : (U, G) int64   tokens along the longest live chain, probes included
    chains : (U, G) int32    chains drawn
    answer_full, tokens_full, probe_tokens_full, latency_full, chains_full : (U,)
    correct_class : (U,) int32   the reference class of the unit's question (-1 unknown)
    """

    family: str
    grid: np.ndarray
    unit: str  # "chain" or "question"
    unit_question: np.ndarray
    answer: np.ndarray
    abstained: np.ndarray
    tokens: np.ndarray
    probe_tokens: np.ndarray
    latency: np.ndarray
    chains: np.ndarray
    answer_full: np.ndarray
    tokens_full: np.ndarray
    probe_tokens_full: np.ndarray
    latency_full: np.ndarray
    chains_full: np.ndarray
    correct_class: np.ndarray
    notes: list[str] = field(default_factory=list)

    @property
    def cost(self) -> np.ndarray:
        """Tokens net of probe cost: generated plus probe tokens, (U, G)."""
        return self.tokens + self.probe_tokens

    @property
    def cost_full(self) -> np.ndarray:
        return self.tokens_full + self.probe_tokens_full


class Family(abc.ABC):
    """A policy family: one knob on a fixed grid, safe (index 0) to aggressive.

    Subclasses set ``name``, ``kind`` ("single" or "multi"), ``requires`` (trace-set
    columns needed) and implement :meth:`make` and :meth:`replay`.
    """

    name: ClassVar[str]
    kind: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    knob: ClassVar[str] = "threshold"

    @property
    @abc.abstractmethod
    def grid(self) -> np.ndarray:
        """The knob's values, ordered from safe to aggressive."""

    @abc.abstractmethod
    def make(self, index: int, n_chains: int = 1) -> Policy:
        """The event-driven policy at grid index ``index`` for one question.

        ``n_chains`` is how many chains the policy may draw for this question (in
        replay: the chains logged for it, capped by the family's own maximum).
        """

    @abc.abstractmethod
    def replay(self, ts) -> ReplayResult:  # noqa: ANN001 - TraceSet, imported lazily to keep layers
        """Vectorized sweep of every grid point over trace set ``ts``."""

    def full(self, ts) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # noqa: ANN001
        """The full-compute decision of every unit of ``ts`` (the family with no early stopping).

        Returns ``(answer_full, tokens_full, probe_tokens_full, latency_full,
        chains_full)``, each of shape ``(U,)`` with the dtypes of
        :class:`ReplayResult`. Both drivers take the ``*_full`` arrays from here,
        so they agree on them by construction.

        The default serves single-chain families: each chain runs to its end and
        returns its final answer class, pays no probe cost and has latency
        ``n_tokens``. Multi-chain families must override it.
        """
        if self.kind != "single":
            raise NotImplementedError(f"multi-chain family '{self.name}' must define full(ts)")
        answer = np.asarray(ts.column("answer_class", fill=MISSING), dtype=np.int32)
        tokens = np.asarray(ts.column("n_tokens", fill=0), dtype=np.int64)
        n = len(tokens)
        return answer, tokens, np.zeros(n, dtype=np.int64), tokens.copy(), np.ones(n, dtype=np.int32)

    def settings(self) -> dict:
        """The family's fixed settings (everything but the knob), for policy files."""
        return {}

    def fit_to(self, ts) -> Family:  # noqa: ANN001
        """This family with its fixed settings scaled to ``ts`` where the defaults cannot run on it.

        Decided from the set's shape only (chain counts, lengths), never from answers,
        so it is fixed before calibration. Default: unchanged.
        """
        return self

    def train(self, ts) -> Family:  # noqa: ANN001
        """This family with whatever it learns from data fitted on the *training role* of ``ts``.

        Only questions in the training role (:func:`stopwise.stats.split.training_mask`)
        may be used, and :meth:`training_mask` must then return them so that they
        are left out of calibration. Default: nothing to learn, unchanged.
        """
        return self

    def training_mask(self, ts) -> np.ndarray | None:  # noqa: ANN001
        """Boolean mask over the questions of ``ts`` that this family learned from (None: none)."""
        return None

    def supports(self, ts) -> str | None:  # noqa: ANN001
        """None if ``ts`` has what this family needs, else a one-line reason."""
        missing = [c for c in self.requires if not ts.has(c)]
        if missing:
            return f"needs {', '.join(missing)}"
        if self.kind == "multi" and ts.n_questions and int(ts.chain_counts.max()) < 2:
            return "needs several chains per question (this set has one)"
        return None


RISKS = ("disagreement", "accuracy", "selective")


def unit_losses(result: ReplayResult, risk: str) -> np.ndarray:
    """The (U, G) 0/1 loss of every unit at every grid point for ``risk``.

    ``disagreement``: the answer differs from the full-compute answer, or is
    missing (a missing early answer is always a loss), or the unit abstained.
    ``accuracy``: the full-compute answer is correct and the early one is not.
    ``selective``: the unit answered and the answer is wrong (abstentions are
    no loss; the selective risk divides by the number answered).
    """
    if risk == "disagreement":
        ans = result.answer
        return ((ans != result.answer_full[:, None]) | (ans == MISSING) | result.abstained).astype(np.float64)
    if risk == "accuracy":
        ref = result.correct_class[:, None]
        full_ok = (result.answer_full[:, None] == ref) & (ref != MISSING)
        early_ok = (result.answer == ref) & ~result.abstained & (ref != MISSING)
        return (full_ok & ~early_ok).astype(np.float64)
    if risk == "selective":
        ref = result.correct_class[:, None]
        wrong = (result.answer != ref) | (ref == MISSING) | (result.answer == MISSING)
        return (wrong & ~result.abstained).astype(np.float64)
    from stopwise.errors import UnknownNameError

    raise UnknownNameError("risk", risk, RISKS)
