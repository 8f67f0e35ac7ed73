"""What the server does with a reasoning model's thinking, and which policies an upstream can run.

Responses
    A chat response carries the thinking in ``reasoning_content`` (``message`` and
    ``delta``), apart from the answer in ``content``, as vLLM's and SGLang's
    reasoning parsers and the DeepSeek API do; ``reasoning_format = "inline"``
    returns it inline instead, between the profile's markers (``<think>...</think>``),
    for clients that parse it themselves. ``usage.completion_tokens_details.reasoning_tokens``
    counts the thinking's tokens. Completions responses carry the raw text.
Policies and upstreams
    A policy calibrated on text-derived probes (the R1/QwQ sets) reads answers the
    chain has stated: it runs over any upstream (:class:`stopwise.engine.text_chain.TextProbeChain`).
    A policy calibrated on forced probes needs an upstream that continues a prefix;
    a chat-only upstream cannot, and the server refuses such a policy at start-up.
"""

from __future__ import annotations

from typing import Any

from stopwise.errors import ConfigError

TEXT_CUES = "text cues"


def probe_kind(doc: dict[str, Any]) -> str:
    """How a policy file's family probes: ``"text"`` (answers read from the chain's text),
    ``"forced"`` (a side request forces an answer) or ``"none"`` (no probes)."""
    from stopwise.policies.registry import family_class

    requires = getattr(family_class(doc["family"]), "requires", ())
    if "probe_position" not in requires and "probe_class" not in requires:
        return "none"
    schedule = str(((doc.get("conditions") or {}).get("probe_schedule")) or "")
    return "text" if schedule.startswith(TEXT_CUES) else "forced"


def check_upstream(doc: dict[str, Any], path: str, capabilities: Any, upstream: str) -> None:
    """Refuse a policy the upstream cannot run (a forced-probe policy on a chat-only upstream)."""
    from stopwise.engine.text_chain import TEXT_PROBE_FAMILIES, TOKEN_SIGNAL_FAMILIES

    if probe_kind(doc) == "forced" and not getattr(capabilities, "prefix_continuation", False):
        raise ConfigError(
            f"policy file '{path}' ({doc['family']}) was calibrated on probes that force an answer, and upstream "
            f"{upstream} cannot continue a prefix (a chat-only API), so it cannot take them",
            hint=f"families that read the stream itself work on it: {', '.join(TEXT_PROBE_FAMILIES)} calibrated on text-derived "
                 f"probes (trace sets imported from text, or collected from a chat upstream), {', '.join(TOKEN_SIGNAL_FAMILIES)} "
                 "where the upstream returns logprobs, and the voting families; or serve from /v1/completions "
                 "(--upstream-api completions), or vLLM/SGLang with --continuation (continue_final_message)",
        )


class ReasoningOutput:
    """One response's text as the client receives it: thinking apart (or inline) and answer.

    Parameters
    ----------
    profile : stopwise.backends.profiles.ModelProfile
    chat : bool
        Chat responses split the thinking off; completions responses carry the raw text.
    inline : bool
        Keep the thinking inline in ``content`` (between the profile's markers).
    """

    def __init__(self, profile: Any, *, chat: bool, inline: bool) -> None:
        self.profile = profile
        self.split = chat and not inline and profile is not None
        self.splitter = profile.splitter() if profile is not None else None  # also counts the thinking's tokens
        self.reasoning_tokens = 0
        self.answered = False  # the answer text has begun: later tokens are not thinking
        self.inline_open = ""
        if chat and inline and profile is not None:
            open_text, _ = profile.raw_reasoning_markers()
            # the prompt opened the thinking: an inline client needs to see the marker too
            self.inline_open = "" if open_text else (profile.think_open or "")

    def feed(self, text: str) -> list[tuple[str, str]]:
        """The ``(field, text)`` pieces of one token's text: field ``reasoning_content`` or ``content``."""
        pieces = self.splitter.feed(text) if self.splitter is not None else [("content", text)]
        if not self.answered:
            if any(kind == "content" and piece for kind, piece in pieces):
                self.answered = True
            elif self.splitter is not None:
                self.reasoning_tokens += 1
        if self.split:
            return _fields(pieces)
        if self.inline_open:
            text, self.inline_open = self.inline_open + text, ""
        return [("content", text)]

    def flush(self) -> list[tuple[str, str]]:
        pieces = self.splitter.flush() if self.splitter is not None else []
        return _fields(pieces) if self.split else []


def _fields(pieces: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The splitter's ``(kind, text)`` pieces as response fields (``reasoning_content`` or ``content``)."""
    return [("reasoning_content" if kind == "reasoning" else "content", piece) for kind, piece in pieces]
