"""Signal monitors: stop a chain on what its token distribution shows, without probing all along.

Path deviation monitoring (arXiv 2603.14251): when the share of high-entropy
tokens (entropy above :data:`~stopwise.policies.features.HIGH_ENTROPY_NATS`,
the "forking" tokens at which reasoning wavers) over the last ``window`` tokens
reaches a limit, the chain has started to wander; stop it and take the forced
answer there. The same rates are features of the learned exit probe
(:mod:`stopwise.policies.features`), so the monitor can be used alone (this
family) or inside the learned policy.

Only the probe that answers for the stop is consumed (and paid for): the first
logged probe at or after the position where the monitor fires. A chain whose
monitor never fires runs to its end and pays nothing.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import ClassVar

import numpy as np

from stopwise.errors import ConfigError
from stopwise.policies.base import ProbeResult, Tokens
from stopwise.policies.features import HIGH_ENTROPY_NATS
from stopwise.policies.single import ProbeArrays, SingleChainFamily, _ChainPolicy

__all__ = ["EntropyMonitor"]


class _EntropyMonitorPolicy(_ChainPolicy):
    def __init__(self, limit: float, window: int, cues: tuple[str, ...] | None) -> None:
        super().__init__(cues)
        self.limit = float(limit)
        self.window = int(window)
        self.recent: deque[bool] = deque()
        self.high = 0
        self.fired = False

    def on_event(self, event):  # noqa: ANN001, ANN201
        if isinstance(event, Tokens):
            h = (not math.isnan(event.entropy)) and event.entropy > HIGH_ENTROPY_NATS
            self.recent.append(h)
            self.high += h
            if len(self.recent) > self.window:
                self.high -= self.recent.popleft()
            if not self.fired and event.position >= self.window and self.high / self.window >= self.limit:
                self.fired = True
        return super().on_event(event)

    def wants_probe(self, position: int) -> bool:
        return self.fired

    def fires(self, probe: ProbeResult) -> bool:
        return True


class EntropyMonitor(SingleChainFamily):
    """Path deviation monitoring: stop once the high-entropy share of the last ``window`` tokens reaches a limit.

    Needs the per-token ``entropy`` column (sets collected by stopwise) and
    probes for the answer at the stop. Grid: limits 1.01 (never fires) down to 0.05.
    """

    name: ClassVar[str] = "entropy_monitor"
    knob: ClassVar[str] = "limit"
    requires: ClassVar[tuple[str, ...]] = ("probe_position", "probe_class", "entropy")
    _grid: ClassVar[tuple] = (1.01, 0.6, 0.5, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05)
    _pays_all_when_running: ClassVar[bool] = False

    def __init__(self, cues: Iterable[str] | str | None = None, window: int = 64, every: int | None = None) -> None:
        super().__init__(cues, every)
        if int(window) < 1:
            raise ConfigError(f"entropy_monitor: window must be >= 1 token, got {window}")
        self.window = int(window)

    def settings(self) -> dict:
        return {**super().settings(), "window": self.window}

    def _policy(self, value):  # noqa: ANN001, ANN202
        return _EntropyMonitorPolicy(value, self.window, self.cues)

    def _prepare(self, ts, pa: ProbeArrays) -> tuple[np.ndarray, list[np.ndarray]]:  # noqa: ANN001
        """Per chain, the high-entropy count of the window ending at every position >= window."""
        n_tok = np.asarray(ts.column("n_tokens", fill=0), dtype=np.int64)
        off, ent = ts.list_column("entropy")
        ent = np.asarray([np.nan if v is None else v for v in ent] if np.asarray(ent).dtype == object else ent, dtype=np.float64)
        counts: list[np.ndarray] = []
        w = self.window
        for j, n in enumerate(n_tok.tolist()):
            e = np.full(n, np.nan)
            seg = ent[off[j]:off[j + 1]][:n]
            e[: len(seg)] = seg
            with np.errstate(invalid="ignore"):
                high = np.concatenate([[0], np.cumsum(e > HIGH_ENTROPY_NATS)])
            counts.append(high[w:] - high[:-w] if n >= w else np.zeros(0, dtype=np.int64))  # windows ending at w..n
        return n_tok, counts

    def _stop(self, pa: ProbeArrays, value, prep=None) -> np.ndarray:  # noqa: ANN001
        n_tok, counts = prep
        trigger = np.full(len(n_tok), np.iinfo(np.int64).max, dtype=np.int64)
        for j, c in enumerate(counts):
            hit = np.flatnonzero(c / self.window >= float(value))
            if len(hit):
                trigger[j] = int(hit[0]) + self.window  # position at which the window ends
        if not len(pa.position):
            return np.full(len(n_tok), -1, dtype=np.int64)
        return pa.first(pa.position >= trigger[pa.chain])

    def _charge_at_stop(self, pa: ProbeArrays, s: np.ndarray) -> np.ndarray:
        return pa.cost[s]
