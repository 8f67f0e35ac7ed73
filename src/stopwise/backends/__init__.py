"""Model backends: the async protocol (:mod:`.base`), the embedded llama.cpp engine
(:mod:`.llamacpp`, extra ``[embedded]``) and any OpenAI-compatible HTTP server
(:mod:`.openai_compat`). Heavy libraries are imported lazily inside each module.
"""

from stopwise.backends.base import (
    LOGPROB_CONVENTION,
    Backend,
    Capabilities,
    ChainResult,
    ProbeResult,
    Sampling,
    TokenStep,
)

__all__ = ["LOGPROB_CONVENTION", "Backend", "Capabilities", "ChainResult", "ProbeResult", "Sampling", "TokenStep"]
