"""Replay policies over logged traces.

:func:`run_reference` is the plain event-by-event driver that defines the
semantics; each family's vectorized ``replay(ts)`` must agree with it exactly.
"""

from stopwise.replay.reference import PolicyError, UnitOutcome, run_reference, run_unit

__all__ = ["PolicyError", "UnitOutcome", "run_reference", "run_unit"]
