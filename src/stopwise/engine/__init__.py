"""The live driver: runs a policy over live backend streams (see :mod:`.live`)."""

from stopwise.engine.live import AnswerClasses, LiveDriver, LiveOutcome

__all__ = ["AnswerClasses", "LiveDriver", "LiveOutcome"]
