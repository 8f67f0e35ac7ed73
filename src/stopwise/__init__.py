"""stopwise: certified early stopping for reasoning LLMs.

Decide when to stop a chain of thought, how many chains to sample, which answer
to return and when to abstain, and certify each rule with a Learn-then-Test
guarantee computed on your own traces.
"""

from stopwise.errors import StopwiseError

__version__ = "0.1.0"

__all__ = ["StopwiseError", "__version__"]
