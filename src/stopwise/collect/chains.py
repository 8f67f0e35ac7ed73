"""A chain being collected, the settings of a collection run, and the record a chain becomes."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from stopwise.backends.probes import DEFAULT_FORCING, token_cue
from stopwise.datasets import DatasetItem

ProgressFn = Callable[[dict[str, Any]], None]


class CollectConfig(BaseModel):
    """Settings of one collection run (they define the run: a resume must match them)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    model: str = "embedded"
    questions: int = Field(600, ge=1)
    offset: int = Field(0, ge=0, description="skip this many questions of the dataset first")
    chains: int = Field(4, ge=1)
    chains_first: tuple[int, int] | None = Field(None, description="(M, K): the first M questions get K chains")
    max_tokens: int = Field(384, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    sampler_top_k: int = Field(40, ge=0)
    probe_every: int = Field(32, ge=0, description="0: no scheduled probes")
    cue_probes: bool = True
    probe_max_tokens: int = Field(16, ge=1)
    forcing: str = DEFAULT_FORCING
    direct: bool = Field(False, description="no chain of thought: the assistant turn starts with the forcing string, "
                                            "and the model writes only the answer (a think-or-not gate's direct probe)")
    api: Literal["completions", "chat"] = Field("completions", description="an HTTP model: completions (probes force answers by "
                                                "continuing the prefix) or chat (a chat-only API: probes are read from the text at cues)")
    profile: str | None = Field(None, description="the model's reasoning profile (default: detected from the model name)")
    top_k: int = Field(5, ge=0, le=5)
    seed: int = 0
    dataset_size: int = Field(500, ge=1, description="questions generated for reasoning-gym datasets")
    batch_chains: int = Field(8, ge=1, description="chains decoded together")
    n_threads: int | None = None
    flush_every: int = Field(32, ge=1, description="write a chunk after this many finished chains (or 60 s)")

    def chains_for(self, index: int) -> int:
        if self.chains_first and index < self.chains_first[0]:
            return max(self.chains, self.chains_first[1])
        return self.chains

    def identity(self) -> dict[str, Any]:
        """The fields that define the output (not how fast it is made); ``direct``, ``api`` and ``profile`` only when set, so that
        collections started before it existed still resume."""
        d = self.model_dump(exclude={"batch_chains", "n_threads", "flush_every"})
        if not d.get("direct"):
            d.pop("direct", None)
        if d.get("api") == "completions":
            d.pop("api", None)
        if d.get("profile") is None:
            d.pop("profile", None)
        return d


def chain_seed(seed: int, question_id: str, sample_id: int) -> int:
    h = hashlib.sha256(f"{seed}|{question_id}|{sample_id}".encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


@dataclass
class _Live:
    """A chain being collected: its per-token columns, probes and the positions probed."""

    item: DatasetItem
    sample_id: int
    seed: int
    tokens: list[str]
    raw: list[bytes]
    logprobs: list[float]
    top_lp: list[list[float]]
    top_tok: list[list[str]]
    entropy: list[float]
    conf: list[float]
    probes: list[tuple[int, str | None, float, int, str]]
    probed_at: set[int]
    finish: str | None = None

    def add(self, st: Any, cfg: CollectConfig) -> list[tuple[int, str]]:
        """Record one generated token; returns the probes to take now as (position, cue).

        Scheduled probes every ``probe_every`` tokens, cue probes after a blank line
        and before a transition word; none at ``max_tokens`` (the chain ends there).
        """
        prev = self.tokens[-1] if self.tokens else ""
        self.tokens.append(st.text)
        self.raw.append(st.raw if st.raw is not None else st.text.encode("utf-8"))
        self.logprobs.append(st.logprob)
        self.top_lp.append(st.top_logprobs[: cfg.top_k])
        self.top_tok.append(st.top_tokens[: cfg.top_k])
        self.entropy.append(st.entropy)
        conf = st.confidence
        if math.isnan(conf) and st.top_logprobs:  # HTTP: DeepConf confidence over the top-k the server gives
            conf = -sum(st.top_logprobs) / len(st.top_logprobs)
        self.conf.append(conf)
        n = len(self.tokens)
        out: list[tuple[int, str]] = []
        cue, before = token_cue(st.text, prev) if cfg.cue_probes else (None, False)
        if cue is not None:
            pos = n - 1 if before else n
            if 0 < pos < cfg.max_tokens and pos not in self.probed_at:
                self.probed_at.add(pos)
                out.append((pos, cue))
        if cfg.probe_every and n % cfg.probe_every == 0 and n < cfg.max_tokens and n not in self.probed_at:
            self.probed_at.add(n)
            out.append((n, "schedule"))
        return out


def _record(lc: _Live, cfg: CollectConfig, build: str | None = None) -> dict[str, Any]:
    from stopwise.answers import extract_answer, find_candidates

    text = b"".join(lc.raw).decode("utf-8", errors="replace")
    if cfg.direct:  # the text continues the forcing string: the answer is what closes the box
        from stopwise.backends.probes import forced_answer

        answer = forced_answer(text)
    else:
        answer = extract_answer(text)
    probes = sorted(lc.probes, key=lambda p: p[0])
    # token end offsets in characters of the decoded text, for the first candidate answer's token
    # position (decoded incrementally, as the whole text is: a character split over two tokens
    # counts once, with the token that completes it)
    import codecs

    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    ends, acc = [], 0
    for raw in lc.raw:
        acc += len(dec.decode(raw))
        ends.append(acc)
    cands = find_candidates(text)
    first = -1
    if cands:
        import bisect

        first = min(bisect.bisect_left(ends, cands[0].end) + 1, len(lc.tokens))
    rec: dict[str, Any] = {
        "question_id": lc.item.question_id,
        "sample_id": lc.sample_id,
        "n_tokens": len(lc.tokens),
        "finish_reason": lc.finish,
        "text": text,
        "answer": answer,
        "tokens": lc.tokens,
        "token_logprobs": lc.logprobs,
        "top_logprobs": lc.top_lp if cfg.top_k else None,
        "top_tokens": lc.top_tok if cfg.top_k else None,
        "entropy": lc.entropy,
        "token_confidence": lc.conf,
        "probe_position": [p[0] for p in probes],
        "probe_answer": [p[1] for p in probes],
        "probe_logprob": [p[2] if p[1] is not None else math.nan for p in probes],
        "probe_cost": [p[3] for p in probes],
        "probe_cue": [p[4] for p in probes],
        "first_candidate_position": first,
        # the llama.cpp build: builds for other CPU features round the logits differently
        "metadata": json.dumps({"seed": lc.seed, **({"build": build} if build else {})}),
    }
    if lc.item.grade is not None:
        rec["correct"] = bool(lc.item.grade(answer))
    return rec
