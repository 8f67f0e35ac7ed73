"""The one settings schema of ``stopwise serve``: flags, environment (``STOPWISE_*``) and a
config file (JSON or YAML via ``--config``) all fill this model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from stopwise.backends.probes import DEFAULT_FORCING


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STOPWISE_", extra="forbid")

    backend: str = Field("embedded", description="embedded | embedded-1.5b | smollm2 | a GGUF path | an OpenAI-compatible URL | trace:DIR?rate=R (a logged trace set streamed at R tokens/s: a test upstream)")
    policies: list[str] = Field(default_factory=list, description="calibrated policy files (stopwise calibrate --out)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = Field(None, description="required to bind a non-loopback address")
    model_name: str | None = Field(None, description="the model id the server reports (default: the backend's)")
    max_chains: int = Field(16, ge=1, le=64, description="most chains one request may draw")
    default_max_tokens: int = Field(384, ge=1)
    max_tokens_limit: int = Field(4096, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_concurrent: int = Field(8, ge=1, description="requests served at once; more get 429")
    uncertified: Literal["refuse", "mark"] = Field("refuse", description="a request outside a policy's certified conditions")
    abstain_message: str = "I am not confident enough to answer this question."
    escalate_to: str | None = Field(None, description="a second backend (URL | embedded-1.5b | GGUF path | trace:DIR): a question the policy abstains on or escalates is answered by it at full compute (a cascade)")
    upstream_api: Literal["completions", "chat"] = Field(
        "completions", description="how an HTTP upstream is spoken to: completions (raw prompts; probes continue a prefix) or chat "
        "(/v1/chat/completions only: hosted APIs, Ollama, vLLM or SGLang with a reasoning parser; no prefix continuation unless continuation is set)")
    continuation: bool = Field(False, description="the chat upstream continues a final assistant message (vLLM/SGLang continue_final_message): probes may force an answer")
    profile: str | None = Field(None, description="the model's reasoning profile: a name from the bundled table (generic, deepseek-r1, qwq, qwen3, gpt-oss, "
                                "gemma-thinking) or a TOML file; default: detected from the model name and chat template")
    reasoning_format: Literal["separate", "inline"] = Field("separate", description="chat responses: the thinking in reasoning_content (separate) "
                                                             "or inline in content between the profile's markers")
    probe_every: int = Field(32, ge=0)
    cue_probes: bool = True
    forcing: str = Field(DEFAULT_FORCING, description="the answer-forcing string of probes; default: the model profile's (the generic profile's is this)")
    probe_max_tokens: int = Field(16, ge=1)
    upstream_timeout_s: float = Field(60.0, gt=0, description="longest silence from the upstream before the request fails")
    log_prompts: bool = False
    drift_share: float = Field(0.0, ge=0, le=1, description="share of policy requests also run at full compute in the shadow")
    drift_alpha: float = Field(0.05, gt=0, lt=1, description="error level of the drift monitor's anytime-valid bound")
