"""The reference replay driver: a plain event-by-event loop over logged traces.

This is the specification that every vectorized sweep (``family.replay``) must
match exactly. It favours clarity over speed: one Python call per token.

Semantics
---------
Units
    For a ``"single"`` family every chain is a unit, run alone with
    ``family.make(k, n_chains=1)``. For a ``"multi"`` family every question is
    a unit, run with ``family.make(k, n_chains=<chains logged for it>)``; its
    chains are drawn in ``sample_id`` order (the set's row order).
Clock
    ``policy.start()`` is called first. ``Spawn(n)`` activates the next ``n``
    logged chains (as many as remain) at the current clock. Each tick advances
    the clock by one; every chain live at the start of the tick, in chain
    order, produces one token and the policy receives
    ``Tokens(chain, position, logprob, confidence, entropy)`` (values at index
    ``position - 1`` of ``token_logprobs``/``token_confidence``/``entropy``,
    NaN where absent). Chains spawned during a tick first advance on the next
    tick.
Probes
    When the policy answers ``Probe(chain, cues)``, every logged probe of that
    chain at exactly its current position whose cue passes ``cues`` and that
    was not delivered before is delivered, in logged order, as a
    ``ProbeResult`` and its ``probe_cost`` charged, until the chain is stopped
    or the unit decided. A probe at a position with no logged probe is
    ignored. Probes logged at position 0 are never delivered (a chain is only
    observable after its first token); the vectorized sweeps drop them too.
Finishing
    After the ``Tokens`` event at ``position == n_tokens`` (and any probe
    there) the chain is exhausted and the policy receives ``Finished(chain,
    n_tokens, answer_class, finish_reason)``. A chain with ``n_tokens == 0``
    receives ``Finished`` right when it is spawned.
Decisions
    ``Stop(chain, answer)`` ends that chain where it is. ``Final(a)``,
    ``Abstain()`` and ``Escalate(m)`` end the unit; every live chain is
    cancelled where it is and remaining actions are ignored. A policy that
    leaves no live chain and no logged chain to draw without deciding raises
    :class:`PolicyError`.
Accounting (per unit)
    tokens = positions reached, summed over drawn chains; probe_tokens = charged
    probe costs; chains = chains drawn; latency = max over drawn chains of
    (spawn clock + positions reached + that chain's charged probe costs);
    answer = ``Final``'s answer (-1 for ``Abstain``/``Escalate``); abstained =
    ``Abstain`` given. The ``*_full`` arrays come from ``family.full(ts)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from stopwise.errors import ConfigError
from stopwise.policies.base import (
    MISSING,
    Abstain,
    PolicyError,
    Escalate,
    Family,
    Final,
    Finished,
    Policy,
    Probe,
    ProbeResult,
    ReplayResult,
    Spawn,
    Stop,
    Tokens,
)

__all__ = ["PolicyError", "UnitOutcome", "run_reference", "run_unit"]

_NAN = float("nan")


@dataclass
class _Chain:
    """One logged chain as plain Python values."""

    n_tokens: int
    answer: int
    finish_reason: str | None
    logprobs: list | None = None
    confidence: list | None = None
    entropy: list | None = None
    # position -> list of (probe index, class, logprob, cost, cue), in logged order
    probes: dict[int, list[tuple[int, int, float, int, str | None]]] = field(default_factory=dict)


@dataclass
class UnitOutcome:
    """Decision and accounting of one policy run over one unit."""

    answer: int
    abstained: bool
    escalated: bool
    tokens: int
    probe_tokens: int
    latency: int
    chains: int
    returned: dict[int, int] = field(default_factory=dict)  # chain -> answer given by Stop


def _scalar(values: list | None, i: int) -> float:
    if values is None or i < 0 or i >= len(values):
        return _NAN
    v = values[i]
    return _NAN if v is None else float(v)


def _load_chains(ts, rows: np.ndarray) -> dict[int, _Chain]:  # noqa: ANN001
    """Read ``rows`` of the chains table into :class:`_Chain` records (nulls mapped to defaults)."""
    table = ts.chains.take(rows)
    names = set(table.column_names)

    def col(name: str) -> list:
        if name not in names:
            return [None] * len(rows)
        return table.column(name).to_pylist()

    n_tokens = col("n_tokens")
    answer = col("answer_class")
    finish = col("finish_reason")
    lps, confs, ents = col("token_logprobs"), col("token_confidence"), col("entropy")
    p_pos, p_cls, p_lp, p_cost, p_cue = (
        col("probe_position"),
        col("probe_class"),
        col("probe_logprob"),
        col("probe_cost"),
        col("probe_cue"),
    )
    out: dict[int, _Chain] = {}
    for i, row in enumerate(rows.tolist()):
        ch = _Chain(
            n_tokens=int(n_tokens[i] or 0),
            answer=MISSING if answer[i] is None else int(answer[i]),
            finish_reason=finish[i],
            logprobs=lps[i],
            confidence=confs[i],
            entropy=ents[i],
        )
        positions = p_pos[i] or []
        for j, p in enumerate(positions):
            if p is None or p < 1 or p > ch.n_tokens:
                continue
            cls = p_cls[i][j] if p_cls[i] is not None else None
            lp = p_lp[i][j] if p_lp[i] is not None else None
            cost = p_cost[i][j] if p_cost[i] is not None else None
            cue = p_cue[i][j] if p_cue[i] is not None else None
            ch.probes.setdefault(int(p), []).append(
                (
                    j,
                    MISSING if cls is None else int(cls),
                    _NAN if lp is None else float(lp),
                    0 if cost is None else int(cost),
                    cue,
                )
            )
        out[row] = ch
    return out


class _UnitRun:
    """State of one policy over one unit while the reference driver runs it."""

    def __init__(self, policy: Policy, chains: Sequence[_Chain], family_name: str) -> None:
        self.policy = policy
        self.logged = list(chains)
        self.family = family_name
        self.clock = 0
        self.pos: list[int] = []
        self.spawn_clock: list[int] = []
        self.charged: list[int] = []
        self.live: list[bool] = []
        self.delivered: list[set[int]] = []
        self.returned: dict[int, int] = {}
        self.decision: tuple[str, int] | None = None

    # --- protocol ------------------------------------------------------------
    def run(self) -> UnitOutcome:
        self._handle(self.policy.start())
        while self.decision is None:
            ticking = [c for c, alive in enumerate(self.live) if alive]
            if not ticking:
                raise PolicyError(
                    f"policy family '{self.family}' exhausted its chains "
                    f"({len(self.pos)} drawn of {len(self.logged)} logged) without a decision",
                    hint="a policy must answer Final, Abstain or Escalate by the last Finished event",
                )
            self.clock += 1
            for c in ticking:
                if self.decision is not None:
                    break
                if not self.live[c]:
                    continue
                ch = self.logged[c]
                self.pos[c] += 1
                p = self.pos[c]
                self._deliver(
                    Tokens(c, p, _scalar(ch.logprobs, p - 1), _scalar(ch.confidence, p - 1), _scalar(ch.entropy, p - 1))
                )
                if self.decision is None and self.live[c] and p >= ch.n_tokens:
                    self._finish(c)
        kind, answer = self.decision
        tokens = int(sum(self.pos))
        probe = int(sum(self.charged))
        latency = max((s + p + q for s, p, q in zip(self.spawn_clock, self.pos, self.charged)), default=0)
        return UnitOutcome(
            answer=int(answer),
            abstained=kind == "abstain",
            escalated=kind == "escalate",
            tokens=tokens,
            probe_tokens=probe,
            latency=int(latency),
            chains=len(self.pos),
            returned=dict(self.returned),
        )

    def _finish(self, c: int) -> None:
        ch = self.logged[c]
        self.live[c] = False
        self._deliver(Finished(c, self.pos[c], ch.answer, ch.finish_reason))

    def _deliver(self, event) -> None:  # noqa: ANN001
        self._handle(self.policy.on_event(event))

    def _check_chain(self, action, c: int) -> None:  # noqa: ANN001
        if not isinstance(c, (int, np.integer)) or c < 0 or c >= len(self.pos):
            raise PolicyError(f"policy family '{self.family}' sent {action!r} for chain {c}, which was never drawn")

    def _handle(self, actions) -> None:  # noqa: ANN001
        for a in actions or ():
            if self.decision is not None:
                return
            if isinstance(a, Probe):
                self._check_chain(a, a.chain)
                self._probe(a.chain, a.cues)
            elif isinstance(a, Stop):
                self._check_chain(a, a.chain)
                if self.live[a.chain]:
                    self.live[a.chain] = False
                    self.returned[a.chain] = int(a.answer)
            elif isinstance(a, Spawn):
                self._spawn(int(a.n))
            elif isinstance(a, Final):
                self.decision = ("final", int(a.answer))
            elif isinstance(a, Abstain):
                self.decision = ("abstain", MISSING)
            elif isinstance(a, Escalate):
                self.decision = ("escalate", MISSING)
            else:
                raise PolicyError(f"policy family '{self.family}' returned {a!r}, which is not an action")

    def _spawn(self, n: int) -> None:
        n = max(0, min(n, len(self.logged) - len(self.pos)))
        new = list(range(len(self.pos), len(self.pos) + n))
        for _ in new:
            self.pos.append(0)
            self.spawn_clock.append(self.clock)
            self.charged.append(0)
            self.live.append(True)
            self.delivered.append(set())
        for c in new:
            if self.decision is None and self.live[c] and self.logged[c].n_tokens <= 0:
                self._finish(c)

    def _probe(self, c: int, cues: tuple[str, ...] | None) -> None:
        if not self.live[c]:
            return
        for j, cls, lp, cost, cue in self.logged[c].probes.get(self.pos[c], ()):
            if self.decision is not None or not self.live[c]:
                return
            if j in self.delivered[c] or (cues is not None and cue not in cues):
                continue
            self.delivered[c].add(j)
            self.charged[c] += cost
            self._deliver(ProbeResult(c, self.pos[c], cls, lp, cost, cue))


def run_unit(policy: Policy, chains: Sequence[_Chain], family_name: str = "?") -> UnitOutcome:
    """Run one policy over one unit's logged chains (see the module docstring)."""
    return _UnitRun(policy, chains, family_name).run()


def run_reference(family: Family, ts, *, indices: Sequence[int] | np.ndarray | None = None) -> ReplayResult:  # noqa: ANN001
    """Replay every grid point of ``family`` over ``ts`` event by event.

    Parameters
    ----------
    family : Family
        A single-chain (``kind == "single"``) or multi-chain family.
    ts : TraceSet
    indices : sequence of int, optional
        Units to run (chain rows for single-chain families, question rows for
        multi-chain ones), in the order given; all units when omitted.

    Returns
    -------
    ReplayResult
        Same layout as ``family.replay(ts)`` (restricted to ``indices``).

    Raises
    ------
    PolicyError
        When a policy exhausts its chains without a decision, or sends a
        malformed action.

    Examples
    --------
    >>> from stopwise.traces.synthetic import synthetic_trace_set
    >>> from stopwise.policies.registry import get_family
    >>> ts = synthetic_trace_set(2, 2, mean_tokens=60, seed=0)
    >>> res = run_reference(get_family("token_budget"), ts)
    >>> res.answer.shape == (4, len(get_family("token_budget").grid))
    True
    """
    grid = np.asarray(family.grid)
    n_grid = len(grid)
    offsets = ts.question_offsets
    if family.kind == "single":
        units = np.arange(ts.n_chains, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        unit_rows = [np.array([r], dtype=np.int64) for r in units.tolist()]
        unit_question = np.asarray(ts.question_index, dtype=np.int64)[units] if len(units) else np.zeros(0, np.int64)
        unit_kind = "chain"
    elif family.kind == "multi":
        units = np.arange(ts.n_questions, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        unit_rows = [np.arange(offsets[q], offsets[q + 1], dtype=np.int64) for q in units.tolist()]
        unit_question = units.copy()
        unit_kind = "question"
    else:
        raise ConfigError(f"family '{family.name}' has kind '{family.kind}'; expected 'single' or 'multi'")

    all_rows = np.unique(np.concatenate(unit_rows)) if unit_rows else np.zeros(0, np.int64)
    chains = _load_chains(ts, all_rows)

    n_units = len(units)
    answer = np.full((n_units, n_grid), MISSING, dtype=np.int32)
    abstained = np.zeros((n_units, n_grid), dtype=bool)
    tokens = np.zeros((n_units, n_grid), dtype=np.int64)
    probe_tokens = np.zeros((n_units, n_grid), dtype=np.int64)
    latency = np.zeros((n_units, n_grid), dtype=np.int64)
    n_drawn = np.zeros((n_units, n_grid), dtype=np.int32)
    for u, rows in enumerate(unit_rows):
        logged = [chains[r] for r in rows.tolist()]
        for k in range(n_grid):
            out = run_unit(family.make(k, n_chains=len(logged)), logged, family.name)
            answer[u, k] = out.answer
            abstained[u, k] = out.abstained
            tokens[u, k] = out.tokens
            probe_tokens[u, k] = out.probe_tokens
            latency[u, k] = out.latency
            n_drawn[u, k] = out.chains

    full = family.full(ts)
    a_full, t_full, p_full, l_full, c_full = (np.asarray(x)[units] for x in full)
    ref = ts.questions.column("reference_class").to_numpy(zero_copy_only=False)
    correct = np.asarray(ref, dtype=np.int32)[unit_question] if n_units else np.zeros(0, np.int32)
    return ReplayResult(
        family=family.name,
        grid=grid,
        unit=unit_kind,
        unit_question=unit_question,
        answer=answer,
        abstained=abstained,
        tokens=tokens,
        probe_tokens=probe_tokens,
        latency=latency,
        chains=n_drawn,
        answer_full=a_full.astype(np.int32),
        tokens_full=t_full.astype(np.int64),
        probe_tokens_full=p_full.astype(np.int64),
        latency_full=l_full.astype(np.int64),
        chains_full=c_full.astype(np.int32),
        correct_class=correct,
        notes=["reference driver"],
    )
