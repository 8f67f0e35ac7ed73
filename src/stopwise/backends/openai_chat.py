"""A chat-only upstream: streamed ``/v1/chat/completions``, with the thinking apart from the answer.

Reasoning servers return a thinking model's thoughts in their own field:
``reasoning_content`` (vLLM's and SGLang's reasoning parsers, the DeepSeek API)
or ``reasoning`` (Ollama, OpenRouter), or inline as ``<think>`` text in
``content`` (no parser). This backend reads all three and hands the rest of
stopwise the chain *as the model wrote it*: the thinking, the profile's
closing marker, then the answer (:meth:`ModelProfile.raw_reasoning_markers`).
So answer extraction, text-derived probes, trace collection and the server's
own reasoning split see the same text whatever the upstream did with it.

Token positions: one step per token where the upstream returns logprobs (one
``logprobs.content`` entry a token), else one step per stream chunk (vLLM and
SGLang send one chunk a token unless a stream interval is set).

A chat upstream cannot continue a prefix unless it supports vLLM's and
SGLang's ``continue_final_message`` (``continuation=True``): without it,
probes that force an answer are impossible, and only families that read the
stream itself can run (see :mod:`stopwise.engine.text_chain`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from stopwise.backends.base import Backend, Capabilities, ChatPrompt, ChainResult, Sampling, TokenStep, chat_messages
from stopwise.backends.openai_compat import OpenAICompatBackend
from stopwise.backends.openai_wire import SHAPE_HINT, choices_of, steps_from_chat_logprobs
from stopwise.backends.probes import forced_span
from stopwise.errors import BackendError

log = logging.getLogger("stopwise.backends")

NO_CONTINUATION_HINT = ("a chat-only upstream cannot continue a prefix; use a family that reads the stream "
                        "(first_candidate, answer_convergence or token_budget calibrated on text-derived probes), "
                        "or an upstream with /v1/completions, or vLLM/SGLang with continuation=true (continue_final_message)")


class OpenAIChatBackend(OpenAICompatBackend):
    """Any OpenAI-compatible chat endpoint (vLLM, SGLang, Ollama, llama.cpp's server, hosted APIs).

    Parameters
    ----------
    base_url : str
    profile : stopwise.backends.profiles.ModelProfile, optional
        How the model delimits its thinking (default: detected from the model name).
    continuation : bool
        The upstream continues a final assistant message (vLLM/SGLang ``continue_final_message``):
        probes may then force an answer.
    **kwargs
        As :class:`~stopwise.backends.openai_compat.OpenAICompatBackend`.
    """

    def __init__(self, base_url: str, *, profile: Any = None, continuation: bool = False, **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self.profile = profile
        self.continuation = continuation
        self.capabilities = Capabilities(logprobs=True, top_k=self.top_logprobs, prefix_continuation=continuation)
        self._warned_inline = False

    def model_info(self) -> dict[str, Any]:
        info = super().model_info()
        info["backend"] = f"OpenAI-compatible chat HTTP ({self.root})"
        if self.profile is not None:
            info["profile"] = self.profile.name
        return info

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return ChatPrompt(messages)

    def _profile(self) -> Any:
        if self.profile is None:
            from stopwise.backends.profiles import detect_profile

            self.profile = detect_profile(self._model or self.name)
        return self.profile

    def _chat_body(self, messages: list[dict[str, Any]], sampling: Sampling, *, stream: bool, logprobs: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model,
            "messages": messages,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.ignore_eos:
            body["ignore_eos"] = True
        body.update(self._profile().request_extras())  # the thinking switch (chat_template_kwargs, reasoning_effort)
        return body

    async def stream(self, prompt: str, sampling: Sampling, *, logprobs: bool = True,
                     require_logprobs: bool = False) -> AsyncIterator[TokenStep]:
        """Stream one chain as the model wrote it (thinking, closing marker, answer)."""
        await self.model_id()
        what = "POST /v1/chat/completions"
        body = self._chat_body(chat_messages(prompt), sampling, stream=True, logprobs=logprobs)
        events = self._sse("/chat/completions", body, what)
        raw = RawText(self._profile())
        seen = 0
        try:
            async for obj in events:
                for ch in choices_of(obj, what):
                    seen += 1
                    delta = ch.get("delta") or {}
                    if not isinstance(delta, dict):
                        raise BackendError(f"{what}: malformed delta from the upstream: {str(delta)[:120]!r}", retryable=False, hint=SHAPE_HINT)
                    text = raw.piece(delta)
                    if text is None:
                        continue  # a role-only or empty keep-alive chunk
                    if raw.inline and not self._warned_inline and raw.profile.thinks:
                        self._warned_inline = True
                        log.warning("upstream %s sends no reasoning field (reasoning_content or reasoning) for a %s model: "
                                    "its thinking is read inline from content (start vLLM or SGLang with --reasoning-parser to separate it)",
                                    self.root, raw.profile.name)
                    lp = ch.get("logprobs")
                    steps = steps_from_chat_logprobs(lp, text) if lp else []
                    if require_logprobs and logprobs and not steps:
                        raise BackendError(f"{what}: the upstream returned text without logprobs", retryable=False,
                                           hint="collection needs logprobs: does the server support logprobs on chat completions?")
                    if len(steps) <= 1:
                        st = steps[0] if steps else TokenStep(text=text)
                        st.text = text
                        yield st
                    else:
                        # several tokens in one chunk: the chunk's text (markers included) goes to the first
                        steps[0].text = text
                        for st in steps[1:]:
                            st.text = ""
                        for st in steps:
                            yield st
        finally:
            await events.aclose()
        if not seen:
            raise BackendError(f"{what}: the upstream's stream carried no choices", retryable=False, hint=SHAPE_HINT)

    async def sample(self, prompt: str, sampling: Sampling, n: int) -> list[ChainResult]:
        return await Backend.sample(self, prompt, sampling, n)

    async def continue_prefix(self, prompt: str, prefix: Sequence[TokenStep], forcing: str, max_tokens: int):
        if not self.continuation:
            raise BackendError(f"upstream {self.root} is chat-only: it cannot continue a prefix (a probe or a forced answer)",
                               retryable=False, hint=NO_CONTINUATION_HINT)
        await self.model_id()
        what = "POST /v1/chat/completions (continue_final_message)"
        greedy = Sampling(temperature=0.0, top_p=1.0, top_k=0, max_tokens=max_tokens, seed=0, stop=("\n",))
        msgs = chat_messages(prompt) + [{"role": "assistant", "content": "".join(s.text for s in prefix) + forcing}]
        body = self._chat_body(msgs, greedy, stream=False, logprobs=True)
        body.update({"continue_final_message": True, "add_generation_prompt": False})
        obj = await self._post_json("/chat/completions", body, what, retry=True)
        ch = (choices_of(obj, what) or [{}])[0]
        msg = ch.get("message") or {}
        steps = steps_from_chat_logprobs(ch.get("logprobs"), str(msg.get("content") or ""))
        text, lp, dec = forced_span((s.text, s.logprob) for s in steps)
        usage = obj.get("usage") or {}
        return text, lp, int(usage.get("prompt_tokens") or 0), dec


class RawText:
    """Rebuilds the model's own text from chat deltas that carry the thinking apart.

    ``piece(delta)`` returns the text this chunk adds to the chain as the model
    wrote it (None for a chunk without text fields): the profile's opening
    marker before the first thinking (where the model writes it), its closing
    marker before the first answer text after thinking.
    """

    def __init__(self, profile: Any) -> None:
        self.profile = profile
        self.phase = "start"
        self.inline = False
        self.open_text, self.close_text = profile.raw_reasoning_markers()

    def piece(self, delta: dict[str, Any]) -> str | None:
        reasoning = delta.get("reasoning_content")
        if reasoning is None:
            reasoning = delta.get("reasoning")
        content = delta.get("content")
        if reasoning is None and (content is None or (content == "" and self.phase == "start")):
            return None  # no text (the role chunk's empty content is not a token)
        out = ""
        if reasoning is not None:
            if self.phase == "start":
                out += self.open_text
            elif self.phase == "content":  # thinking again after an answer (rare): as the model wrote it
                out += self.open_text
            self.phase = "reasoning"
            out += str(reasoning)
        if content is not None:
            if self.phase == "reasoning" and content != "":
                out += self.close_text
                self.phase = "content"
            elif self.phase == "start":
                self.inline = True  # no reasoning field before the first content: thinking (if any) is inline
                self.phase = "content"
            out += str(content)
        return out
