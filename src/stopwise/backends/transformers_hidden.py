"""Hidden states from a transformers model (extra ``[hidden]``): teacher-forced forward passes over given text.

llama.cpp does not hand out hidden states through its Python API, so the
hidden-state features come from the same GGUF file loaded into transformers
(dequantized to float32 on the CPU). :class:`HiddenStateModel` runs one forward
pass over a prompt plus a logged chain and returns the residual-stream vector of
one layer at chosen character offsets of the chain (the last model token that
ends at or before each offset). Re-running a logged chain is exact for the text;
the token boundaries can differ from the sampling model's where the two
tokenizers split text differently, so positions are mapped through character
offsets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stopwise.errors import ConfigError, MissingExtraError

__all__ = ["HiddenStateModel"]


class HiddenStateModel:
    """A causal LM from a GGUF file (or a Hugging Face directory) that returns hidden states at positions.

    Parameters
    ----------
    path : str or Path
        A GGUF file (loaded with transformers' GGUF support) or a model directory.
    layer : int, optional
        Which hidden layer (0 = embeddings, ``n_layers`` = last); default two thirds of the depth.
    threads : int, optional
        torch CPU threads.
    """

    def __init__(self, path: str | Path, *, layer: int | None = None, threads: int | None = None) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise MissingExtraError("hidden-state features", "hidden", "torch, transformers, gguf") from exc
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"model '{p}' does not exist")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # stopwise shows its own progress
        hf_logging.set_verbosity_error()
        if threads:
            torch.set_num_threads(int(threads))
        kw: dict[str, Any] = {"gguf_file": p.name} if p.is_file() else {}
        where = str(p.parent if p.is_file() else p)
        self.tokenizer = AutoTokenizer.from_pretrained(where, **kw)
        self.model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kw)
        self.model.eval()
        self.n_layers = int(self.model.config.num_hidden_layers)
        self.layer = (2 * self.n_layers) // 3 if layer is None else int(layer)
        if not 0 <= self.layer <= self.n_layers:
            raise ConfigError(f"layer {layer} is outside 0..{self.n_layers}")
        self.hidden_size = int(self.model.config.hidden_size)
        self._torch = torch

    def hidden_at(self, prompt: str, chain: str, char_ends: list[int]) -> np.ndarray:
        """Vectors (len(char_ends), hidden) in float16: the layer's state at the last token of ``prompt + chain[:end]``."""
        enc = self.tokenizer(prompt + chain, return_offsets_mapping=True, add_special_tokens=False)
        ids = enc["input_ids"]
        ends = np.asarray([e for _, e in enc["offset_mapping"]], dtype=np.int64)
        if not ids:
            return np.zeros((len(char_ends), self.hidden_size), dtype=np.float16)
        with self._torch.no_grad():
            out = self.model(input_ids=self._torch.tensor([ids]), output_hidden_states=True)
        h = out.hidden_states[self.layer][0].float().numpy()
        base = len(prompt)
        rows = []
        for e in char_ends:
            # the last token that ends at or before the prefix end (at least the prompt's last token)
            k = int(np.searchsorted(ends, base + int(e), side="right")) - 1
            rows.append(h[max(k, 0)])
        return np.asarray(rows, dtype=np.float16).reshape(len(char_ends), self.hidden_size)
