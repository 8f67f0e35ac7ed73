"""The full-compute policy: draw ``n`` chains, let every one finish, vote.

The server's drift monitor runs it in the shadow of a calibrated policy, with
the same seeds, to measure the live disagreement between the early decision
and the full-compute one (for a single chain, ``n = 1``: the chain's own final
answer).
"""

from __future__ import annotations

from stopwise.policies.base import Action, Event, Final, Finished, Spawn
from stopwise.policies.voting import vote


class FullCompute:
    """Spawn ``n`` chains, wait for every ``Finished``, answer the majority (ties: first drawn)."""

    def __init__(self, n: int) -> None:
        self.n = max(1, int(n))
        self.answers: dict[int, int] = {}

    def start(self) -> list[Action]:
        return [Spawn(self.n)]

    def on_event(self, event: Event) -> list[Action]:
        if isinstance(event, Finished):
            self.answers[event.chain] = event.answer
            if len(self.answers) == self.n:
                return [Final(vote([self.answers[c] for c in sorted(self.answers)]))]
        return []
