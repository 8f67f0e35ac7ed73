"""The embedded engine: llama.cpp in-process on the CPU, batched (synchronous; :mod:`stopwise.backends.llamacpp` wraps it).

:class:`BatchEngine` owns one llama.cpp context with a unified KV cache and many
sequence ids. Each :meth:`BatchEngine.step` makes one ``llama_decode`` call that
advances every active chain by one token, prefills newly submitted prompts and
runs probes, so chains of one prompt and chains of different prompts share the
forward pass (on a CPU the weights are read once per step instead of once per
chain, which is where the speed-up comes from).

* Every sequence has its own KV stream (``kv_unified=False``): a chain's cells and
  their order never depend on what else runs, which is what makes a chain with
  probes token-identical to the same chain without them (in a shared cache the
  probe's cells change where the chain's later cells go, and so the rounding of
  its attention sums). A prompt is prefilled once and its cells copied to the
  other chains of that prompt with ``llama_memory_seq_cp`` (a copy of a few MB,
  far cheaper than prefilling again).
* Sampling is done here with numpy from the raw logits, with one
  ``numpy.random.Generator`` per chain, so a chain's tokens depend only on its
  seed and its logits. The logits themselves are **not** independent of the
  batch: llama.cpp's CPU matrix kernels round differently for different batch
  widths, so the same seed alone and beside other chains can drift apart
  (``benchmarks/batch_determinism.py``: on the 0.5B model, beside 7 other
  chains from token 38, beside 3 not within 200 tokens). A chain is
  reproducible with the same batch composition; probes do not change it (they
  decode in a call of their own).
* Per generated position, from the logits with numpy: the chosen token's raw
  logprob (log-softmax at temperature 1), the top-5 tokens with logprobs, the
  full-vocabulary entropy and DeepConf's token confidence (minus the mean of the
  top-20 logprobs).
* A probe copies the chain's cells to a spare sequence, prefills the chain's
  pending token and the forcing string there, decodes greedily for a few tokens
  in a decode call of its own, and removes the spare sequence: the chain's cells
  and forward passes are never touched, so it continues exactly as it would have
  without the probe.

The engine is synchronous and not thread-safe; :class:`~stopwise.backends.llamacpp.EmbeddedBackend` runs it
on one worker thread behind the async :class:`~stopwise.backends.base.Backend`
interface. ``llama_cpp`` is imported lazily (extra ``[embedded]``).
"""

from __future__ import annotations

import ctypes
import heapq
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stopwise.backends.base import (
    ProbeResult,
    Sampling,
    TokenStep,
)
from stopwise.errors import BackendError, ConfigError, MissingExtraError

TOP_N = 5
CONF_K = 20


def _import_llama_cpp():
    try:
        import llama_cpp
        from llama_cpp import _internals
    except ImportError as exc:
        raise MissingExtraError("the embedded llama.cpp backend", "embedded", "llama-cpp-python") from exc
    return llama_cpp, _internals


def logit_stats(logits: np.ndarray, n_top: int = TOP_N, conf_k: int = CONF_K, n_cand: int = 40):
    """Raw log-softmax statistics of one logits row (numpy, no full sort).

    Returns ``(logp_of, top_ids, top_logprobs, entropy, confidence, cand_ids, cand_logits)``
    where ``logp_of(i)`` gives the logprob of token ``i``, ``top_*`` hold the ``n_top``
    best tokens in descending order, ``confidence`` is ``-mean`` of the ``conf_k``
    best logprobs, and ``cand_*`` are the ``n_cand`` best tokens (descending) for sampling.
    """
    x = logits
    k = max(n_top, conf_k, n_cand)
    cand = np.argpartition(x, -k)[-k:]
    cand = cand[np.argsort(-x[cand], kind="stable")]
    m = float(x[cand[0]])
    e = np.exp(x - m)
    s = float(e.sum())
    lse = m + math.log(s)
    # entropy = lse - sum(p * x)
    entropy = lse - float(np.dot(e, x)) / s
    top_lp = x[cand] - lse
    conf = -float(top_lp[:conf_k].mean())
    return lse, cand[:n_top], top_lp[:n_top], entropy, conf, cand[:n_cand], x[cand[:n_cand]]


def sample_token(
    cand_ids: np.ndarray, cand_logits: np.ndarray, sampling: Sampling, rng: np.random.Generator,
    logits: np.ndarray | None = None,
) -> int:
    """Draw one token from the best candidates (descending) with temperature, top-k and top-p.

    Where the settings reach past the candidates (``top_k`` 0, i.e. no cut, or larger than
    the candidates) and the whole ``logits`` row is given, the draw is from the whole
    vocabulary (top-p applied to its full softmax). Uses exactly one uniform draw per call
    (also when greedy) so a chain's random stream does not depend on its settings' branch.
    """
    u = rng.random()
    if sampling.temperature <= 0:
        return int(cand_ids[0])
    if logits is not None and not 0 < sampling.top_k <= len(cand_ids):
        return _sample_wide(logits, sampling, u)
    n = len(cand_ids) if sampling.top_k <= 0 else min(sampling.top_k, len(cand_ids))
    z = cand_logits[:n].astype(np.float64) / sampling.temperature
    p = np.exp(z - z[0])
    p /= p.sum()
    if sampling.top_p < 1.0:
        c = np.cumsum(p)
        keep = int(np.searchsorted(c, sampling.top_p) + 1)
        p = p[:keep] / c[min(keep, len(c)) - 1]
    idx = int(np.searchsorted(np.cumsum(p), u * p.sum(), side="right"))
    return int(cand_ids[min(idx, len(p) - 1)])


def _sample_wide(logits: np.ndarray, sampling: Sampling, u: float) -> int:
    """:func:`sample_token` past the candidates: top-k over the whole row (0: none), then top-p of
    the full softmax, using the uniform draw ``u``."""
    p = np.exp((logits.astype(np.float64) - float(logits.max())) / sampling.temperature)
    total = float(p.sum())
    k = max(0, sampling.top_k)
    if k == 0 and sampling.top_p >= 1.0:  # the whole softmax: any order of the tokens samples it
        idx = int(np.searchsorted(np.cumsum(p), u * total, side="right"))
        return min(idx, len(p) - 1)
    # the k best, or (no top-k) enough of the best to hold top_p of the mass
    n = k or 256
    while True:
        n = min(n, len(p))
        cand = np.argpartition(-p, n - 1)[:n]
        cand = cand[np.argsort(-p[cand], kind="stable")]
        q = p[cand]
        if k or n == len(p) or float(q.sum()) >= sampling.top_p * total:
            break
        n *= 8
    if k:
        total = float(q.sum())  # top-k renormalises over the k best before top-p
    if sampling.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(q) / total, sampling.top_p) + 1)
        q = q[:keep]
    idx = int(np.searchsorted(np.cumsum(q), u * float(q.sum()), side="right"))
    return int(cand[min(idx, len(q) - 1)])


@dataclass
class _ProbeRequest:
    cid: int
    position: int
    forcing: list[int]
    max_new: int
    cue: str
    stop: Callable[[str], bool]


@dataclass
class _Probe:
    cid: int
    seq: int
    tokens: list[int]  # what it prefills: the prefix tokens its copied cells lack, then the forcing string
    pos: int  # KV position of tokens[0]
    max_new: int
    cue: str
    position: int
    stop: Callable[[str], bool]
    generated: list[int] = field(default_factory=list)
    text: bytearray = field(default_factory=bytearray)
    logprob: float = 0.0
    prefill: int = 0  # tokens prefilled, once all of them are
    prefilled: int = 0  # of ``tokens`` so far (a prefill longer than n_batch takes several steps)


@dataclass
class _Chain:
    cid: int
    seq: int
    sampling: Sampling
    rng: np.random.Generator
    prompt_len: int
    pos: int = 0  # next KV position of this chain's sequence
    pending: int | None = None  # sampled, not yet decoded
    n_generated: int = 0
    finished: str | None = None
    prompt: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # generated ids
    text: bytearray = field(default_factory=bytearray)


@dataclass
class _Prompt:
    tokens: list[int]
    chains: list[_Chain]


@dataclass
class EngineEvent:
    """Output of :meth:`BatchEngine.step`: ``kind`` is ``token``, ``probe`` or ``finished``."""

    kind: str
    chain: int
    step: TokenStep | None = None
    probe: ProbeResult | None = None
    finish_reason: str | None = None


class SlotsFull(BackendError):
    """Not enough free sequence slots for the chains asked for (right now)."""


class BatchEngine:
    """Batched decoding of many chains over one llama.cpp context.

    Parameters
    ----------
    model_path : str
        A GGUF file.
    n_ctx_seq : int
        KV cells of each sequence (prompt + generated tokens + a probe must fit).
    n_seq_max : int
        Sequences: chains plus probes in flight. KV memory is ``n_ctx_seq * n_seq_max`` cells.
    n_threads : int, optional
        CPU threads (default: all cores).
    n_batch : int
        Most tokens one decode call takes (prompt prefill is split to fit).
    flash_attn : bool
        Off by default, as in llama-cpp-python, so logits match its server's.
    """

    def __init__(
        self,
        model_path: str,
        *,
        n_ctx_seq: int = 1024,
        n_seq_max: int = 32,
        n_threads: int | None = None,
        n_batch: int = 2048,
        flash_attn: bool = False,
        verbose: bool = False,
    ) -> None:
        llama_cpp, internals = _import_llama_cpp()
        self._ll = llama_cpp
        if not os.path.isfile(model_path):
            raise ConfigError(f"model file '{model_path}' does not exist")
        if not verbose:
            llama_cpp.llama_log_set(_silent_log(llama_cpp), ctypes.c_void_p(0))
        mparams = llama_cpp.llama_model_default_params()
        try:
            self.model = internals.LlamaModel(path_model=model_path, params=mparams, verbose=verbose)
        except ValueError as exc:
            raise BackendError(f"llama.cpp could not load '{model_path}': {exc}", hint="is it a GGUF file?") from exc
        n_seq_max = min(n_seq_max, llama_cpp.llama_max_parallel_sequences())
        cparams = llama_cpp.llama_context_default_params()
        n_ctx_seq = int(math.ceil(n_ctx_seq / 256) * 256)
        cparams.n_ctx = n_ctx_seq * n_seq_max
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = n_seq_max
        cparams.kv_unified = False
        # llama-cpp-python's own default (and so llama_cpp.server's): the same model gives
        # the same logits in-process and behind the HTTP server
        cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        threads = n_threads or os.cpu_count() or 1
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        try:
            self.ctx = internals.LlamaContext(model=self.model, params=cparams, verbose=verbose)
        except ValueError as exc:
            raise BackendError(f"llama.cpp could not create a context for '{model_path}': {exc}") from exc
        self.model_path = model_path
        self.n_ctx_seq = n_ctx_seq
        self.n_batch = n_batch
        self.n_seq_max = n_seq_max
        self.n_vocab = self.model.n_vocab()
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._free_seqs = list(range(n_seq_max))  # a min-heap: the lowest free id first
        self._chains: dict[int, _Chain] = {}
        self._prompts: list[_Prompt] = []
        self._probes: list[_Probe] = []
        self._probe_requests: list[_ProbeRequest] = []
        self._retired: dict[int, _Chain] = {}
        self._next_cid = 0
        self._pieces = [self._piece(i) for i in range(self.n_vocab)]
        self._eog = np.array([llama_cpp.llama_vocab_is_eog(self.model.vocab, i) for i in range(self.n_vocab)])
        self.metadata = self.model.metadata()
        self.tokens_decoded = 0
        self.build = build_info(llama_cpp)

    # ---- vocabulary -------------------------------------------------------------------------

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = self._ll.llama_token_to_piece(self.model.vocab, token, buf, 256, 0, False)
        return bytes(buf[: max(n, 0)])

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of ``text`` (no BOS added; control tokens in text are parsed when ``special``)."""
        return self.model.tokenize(text.encode("utf-8"), False, special)

    def tokenize_prompt(self, text: str) -> list[int]:
        """Token ids of a whole prompt: BOS first where the model asks for it (as llama.cpp does)."""
        add_bos = bool(self._ll.llama_vocab_get_add_bos(self.model.vocab))
        ids = self.model.tokenize(text.encode("utf-8"), add_bos, True)
        return ids

    def piece(self, token: int) -> bytes:
        return self._pieces[token]

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self._pieces[t] for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(self._eog[token])

    # ---- submission -------------------------------------------------------------------------

    @property
    def n_active(self) -> int:
        return sum(1 for c in self._chains.values() if c.finished is None)

    @property
    def free_seqs(self) -> int:
        return len(self._free_seqs)

    def submit(self, prompt_tokens: Sequence[int], samplings: Sequence[Sampling]) -> list[int]:
        """Start one chain per entry of ``samplings`` on a shared prompt; returns chain ids.

        Each chain gets its own ``numpy.random.Generator(seed)``; a ``None`` seed draws one.

        Raises
        ------
        BackendError
            If there are not enough free sequence ids or the prompt does not fit.
        """
        if not prompt_tokens:
            raise ConfigError("empty prompt")
        if len(samplings) > len(self._free_seqs):
            raise SlotsFull(
                f"{len(samplings)} chains requested but only {len(self._free_seqs)} sequence slots are free",
                retryable=True,
                hint="wait for running chains to finish or raise n_seq_max",
            )
        if len(prompt_tokens) > self.n_batch:
            raise ConfigError(f"prompt of {len(prompt_tokens)} tokens exceeds n_batch {self.n_batch}",
                              hint="shorten the prompt or raise n_batch")
        if len(prompt_tokens) + max(s.max_tokens for s in samplings) + 32 > self.n_ctx_seq:
            raise ConfigError(
                f"prompt of {len(prompt_tokens)} tokens plus max_tokens (and 32 for a probe) does not fit "
                f"a per-sequence context of {self.n_ctx_seq}",
                hint="lower max_tokens or raise n_ctx_seq",
            )
        chains = []
        for s in samplings:
            seed = s.seed if s.seed is not None else int(np.random.SeedSequence().entropy % (2**63))
            c = _Chain(self._next_cid, heapq.heappop(self._free_seqs), s, np.random.default_rng(seed), len(prompt_tokens), prompt=list(prompt_tokens))
            self._next_cid += 1
            self._chains[c.cid] = c
            chains.append(c)
        self._prompts.append(_Prompt(list(prompt_tokens), chains))
        return [c.cid for c in chains]

    def request_probe(
        self,
        cid: int,
        forcing: Sequence[int],
        max_new: int,
        *,
        cue: str = "request",
        stop: Callable[[str], bool] | None = None,
        position: int | None = None,
    ) -> None:
        """Probe chain ``cid`` after its first ``position`` generated tokens (default: all so far).

        The probe starts at the next step: it copies the chain's KV cells of the
        prefix that are already decoded to a spare sequence, prefills the rest of
        the prefix and ``forcing``, and decodes greedily until ``stop(text)`` (the
        continuation holds a whole answer) or ``max_new`` tokens. The result
        arrives as a ``probe`` event. The chain itself is never touched; it may
        have moved on or even finished (then the whole prefix is prefilled).
        """
        c = self._chains.get(cid) or self._retired.get(cid)
        if c is None:
            raise ConfigError(f"no chain {cid} to probe")
        pos = c.n_generated if position is None else int(position)
        if not 0 <= pos <= c.n_generated:
            raise ConfigError(f"chain {cid} has {c.n_generated} tokens; cannot probe at {pos}")
        self._probe_requests.append(_ProbeRequest(cid, pos, list(forcing), max_new, cue, stop or (lambda _t: False)))

    def has_probes(self, cid: int) -> bool:
        """Whether chain ``cid`` has probes requested or in flight."""
        return any(r.cid == cid for r in self._probe_requests) or any(p.cid == cid for p in self._probes)

    def cancel(self, cid: int) -> None:
        """Stop chain ``cid`` now and free its cells (its probes in flight are dropped)."""
        c = self._chains.get(cid)
        if c is None:
            return
        if c.finished is None:
            c.finished = "cancelled"
        self._probe_requests = [r for r in self._probe_requests if r.cid != cid]
        for p in [p for p in self._probes if p.cid == cid]:
            self._end_probe(p)
        self._release(c)

    def _release(self, c: _Chain) -> None:
        if c.cid in self._chains and not any(c in p.chains for p in self._prompts):
            self._ll.llama_memory_seq_rm(self.ctx.memory, c.seq, -1, -1)
            heapq.heappush(self._free_seqs, c.seq)
            del self._chains[c.cid]
            # keep its tokens a while: a probe may still be asked at one of its positions
            self._retired[c.cid] = c
            while len(self._retired) > 4096:
                self._retired.pop(next(iter(self._retired)))

    def _end_probe(self, p: _Probe) -> None:
        self._ll.llama_memory_seq_rm(self.ctx.memory, p.seq, -1, -1)
        heapq.heappush(self._free_seqs, p.seq)
        self._probes.remove(p)

    # ---- one step ---------------------------------------------------------------------------

    def step(self) -> list[EngineEvent]:
        """Advance everything by one token: prefill waiting prompts, decode every chain, run probes.

        Chains and prompts go through one ``llama_decode`` call; probes in flight go
        through a second one, so the chains' forward pass is exactly the one they
        would have without probes. Returns the events produced, in order; does
        nothing if idle.
        """
        self._start_probes()
        entries: list[tuple[str, Any]] = []
        n = 0
        for c in self._chains.values():
            if c.finished is None and c.pending is not None:
                n = self._add(n, c.pending, c.pos, c.seq, True)
                entries.append(("chain", c))
        for pr in list(self._prompts):
            if self.n_batch - n < len(pr.tokens):
                if n == 0:
                    raise ConfigError(f"prompt of {len(pr.tokens)} tokens exceeds n_batch {self.n_batch}")
                break
            seq0 = pr.chains[0].seq
            for j, t in enumerate(pr.tokens):
                n = self._add(n, t, j, seq0, j == len(pr.tokens) - 1)
            entries.append(("prompt", pr))
            self._prompts.remove(pr)
        events = self._decode(entries, n)
        entries, n = [], 0
        # probes decoding take one token each, first; probes to prefill take the room left
        for p in self._probes:
            if p.prefill:
                n = self._add(n, p.generated[-1], p.pos, p.seq, True)
                p.pos += 1
                entries.append(("probe", p))
        for p in self._probes:
            if p.prefill == 0:
                left = p.tokens[p.prefilled:]
                if n + len(left) > self.n_batch:
                    if len(left) <= self.n_batch or n == self.n_batch:
                        continue  # it fits a later step whole
                    # longer than any batch (a probe on a chain already released prefills its whole
                    # prefix): prefill it in parts, one per step, in the room this step leaves
                    left = left[: self.n_batch - n]
                last = p.prefilled + len(left) == len(p.tokens)
                for j, t in enumerate(left):
                    n = self._add(n, t, p.pos + j, p.seq, last and j == len(left) - 1)
                p.prefilled += len(left)
                p.pos += len(left)
                if last:
                    p.prefill = len(p.tokens)
                    entries.append(("probe", p))
        events += self._decode(entries, n)
        return events

    def _start_probes(self) -> None:
        # prefix = prompt + the first `position` generated tokens; the cells of the part the
        # chain has already decoded are copied (positions [0, copied)), the rest is prefilled
        while self._probe_requests and self._free_seqs:
            r = self._probe_requests.pop(0)
            c = self._chains.get(r.cid) or self._retired.get(r.cid)
            if c is None:
                continue
            prefix_len = c.prompt_len + r.position
            copied = min(prefix_len, c.pos) if r.cid in self._chains else 0
            seq = heapq.heappop(self._free_seqs)
            if copied:
                # across KV streams only whole sequences can be copied: copy, then cut at `copied`
                self._ll.llama_memory_seq_cp(self.ctx.memory, c.seq, seq, -1, -1)
                if not self._ll.llama_memory_seq_rm(self.ctx.memory, seq, copied, -1):
                    self._ll.llama_memory_seq_rm(self.ctx.memory, seq, -1, -1)
                    copied = 0
            full = c.prompt + c.tokens[: r.position]
            self._probes.append(_Probe(r.cid, seq, full[copied:] + r.forcing, copied, r.max_new, r.cue, r.position, r.stop))

    def _add(self, n: int, tok: int, pos: int, seq: int, logits: bool) -> int:
        b = self.batch
        b.token[n] = tok
        b.pos[n] = pos
        b.n_seq_id[n] = 1
        b.seq_id[n][0] = seq
        b.logits[n] = 1 if logits else 0
        return n + 1

    def _decode(self, entries: list[tuple[str, Any]], n: int) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        if n == 0:
            return events
        self.batch.n_tokens = n
        rc = self._ll.llama_decode(self.ctx.ctx, self.batch)
        if rc != 0:
            raise BackendError(
                f"llama_decode returned {rc} (batch of {n} tokens, {len(self._chains)} chains)",
                retryable=rc == 1,
                hint="the KV cache is full: lower the number of concurrent chains or raise n_ctx" if rc == 1 else None,
            )
        self.tokens_decoded += n
        rows = np.ctypeslib.as_array(self._ll.llama_get_logits(self.ctx.ctx), shape=(len(entries), self.n_vocab))
        for row, (kind, obj) in enumerate(entries):
            x = rows[row]
            if kind == "prompt":
                for c in obj.chains[1:]:
                    self._ll.llama_memory_seq_cp(self.ctx.memory, obj.chains[0].seq, c.seq, -1, -1)
                for c in obj.chains:
                    c.pos = len(obj.tokens)
                    if c.finished is None:
                        events.extend(self._sample(c, x))
                    else:
                        self._release(c)
            elif kind == "chain":
                obj.pos += 1
                obj.pending = None
                events.extend(self._sample(obj, x))
            else:
                events.extend(self._probe_step(obj, x))
        return events

    def _sample(self, c: _Chain, x: np.ndarray) -> list[EngineEvent]:
        lse, top_ids, top_lp, ent, conf, cand_ids, cand_logits = logit_stats(x)
        if c.sampling.ignore_eos:  # drawn as if end-of-generation were not in the vocabulary; recorded figures unchanged
            keep = ~self._eog[cand_ids]
            cand_ids, cand_logits = cand_ids[keep], cand_logits[keep]
            x = np.where(self._eog, np.float32(-np.inf), x)
        tok = sample_token(cand_ids, cand_logits, c.sampling, c.rng, logits=x)
        if self._eog[tok]:
            c.finished = "stop"
            self._release(c)
            return [EngineEvent("finished", c.cid, finish_reason="stop")]
        raw = self._pieces[tok]
        step = TokenStep(
            text=raw.decode("utf-8", errors="replace"),
            token_id=tok,
            logprob=float(x[tok] - lse),
            top_tokens=[self._pieces[int(i)].decode("utf-8", errors="replace") for i in top_ids],
            top_logprobs=[float(v) for v in top_lp],
            entropy=float(ent),
            confidence=float(conf),
            raw=raw,
        )
        c.n_generated += 1
        c.tokens.append(tok)
        c.text.extend(raw)
        out = [EngineEvent("token", c.cid, step=step)]
        stop_hit = any(s in c.text.decode("utf-8", errors="ignore")[-64:] for s in c.sampling.stop) if c.sampling.stop else False
        if stop_hit or c.n_generated >= c.sampling.max_tokens:
            reason = "stop" if stop_hit else "length"
            c.finished = reason
            self._release(c)
            out.append(EngineEvent("finished", c.cid, finish_reason=reason))
        else:
            c.pending = tok
        return out

    def _probe_step(self, p: _Probe, x: np.ndarray) -> list[EngineEvent]:
        if p not in self._probes:
            return []
        tok = int(np.argmax(x))
        m = float(x.max())
        lse = m + math.log(float(np.exp(x - m).sum()))
        done = bool(self._eog[tok])
        if not done:
            p.generated.append(tok)
            p.text.extend(self._pieces[tok])
            p.logprob += float(x[tok] - lse)
            text = p.text.decode("utf-8", errors="ignore")
            done = p.stop(text) or len(p.generated) >= p.max_new
        if not done:
            return []
        res = ProbeResult(
            position=p.position,
            text=p.text.decode("utf-8", errors="replace"),
            logprob=p.logprob,
            prefill_tokens=p.prefill,
            decode_tokens=len(p.generated),
            cue=p.cue,
        )
        cid = p.cid
        self._end_probe(p)
        return [EngineEvent("probe", cid, probe=res)]

    def close(self) -> None:
        if getattr(self, "batch", None) is not None:
            self._ll.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None) is not None:
            self.ctx.close()
            self.model.close()
            self.ctx = None


_LOG_CB = None


def build_info(llama_cpp: Any = None) -> str:
    """The llama.cpp build in use: llama-cpp-python's version and the CPU features its
    kernels were compiled for (e.g. ``llama-cpp-python 0.3.36 (AVX2 FMA F16C)``).

    Different builds round the logits differently (an AVX-512 build is not
    bit-identical to the portable AVX2 one), so a collection records it per chain.
    """
    if llama_cpp is None:
        llama_cpp, _ = _import_llama_cpp()
    info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")
    flags = []
    for part in info.split("|"):  # "CPU : SSE3 = 1 | AVX = 1 | ..."
        key, _, val = part.partition("=")
        key = key.split(":")[-1].strip()
        if val.strip() == "1" and key in _KERNEL_FLAGS:
            flags.append(key)
    return f"llama-cpp-python {llama_cpp.__version__} ({' '.join(flags) or 'no SIMD flags'})"


_KERNEL_FLAGS = {"AVX", "AVX2", "AVX_VNNI", "FMA", "F16C", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16",
                 "AMX_INT8", "AMX_BF16", "NEON", "ARM_FMA", "SVE"}


def _silent_log(llama_cpp):
    global _LOG_CB
    if _LOG_CB is None:

        @llama_cpp.llama_log_callback
        def _cb(level, text, user_data):  # noqa: ANN001
            return None

        _LOG_CB = _cb
    return _LOG_CB
