"""Chat templates rendered client-side (Hugging Face Jinja templates, as GGUF files carry them).

``jinja2`` comes with llama-cpp-python (extra ``[embedded]``) and with the
``[http]`` extra; it runs in a sandbox.
"""

from __future__ import annotations

from collections.abc import Sequence

from stopwise.errors import ConfigError, MissingExtraError


def chat_template(metadata: dict[str, str]) -> str | None:
    """The Jinja chat template a GGUF file carries, if any."""
    return metadata.get("tokenizer.chat_template")


def render_chat_template(template: str, messages: Sequence[dict[str, str]], *, eos: str = "", bos: str = "") -> str:
    """Render a Hugging Face Jinja chat template with the generation prompt."""
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as exc:  # jinja2 comes with llama-cpp-python
        raise MissingExtraError("chat templates", "embedded", "jinja2") from exc

    def raise_exception(msg: str):
        raise ConfigError(f"chat template error: {msg}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=list(messages), add_generation_prompt=True, eos_token=eos, bos_token=bos
    )
