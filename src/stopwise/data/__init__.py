"""Trace sets bundled with the package (real data; see data/bundled/README.md)."""

from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).parent / "bundled"


def bundled_paths() -> list[Path]:
    """Directories of every bundled trace set, in name order."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p for p in BUNDLED_DIR.iterdir() if (p / "manifest.json").is_file())


def bundled_path(name: str) -> Path:
    from stopwise.errors import UnknownNameError

    p = BUNDLED_DIR / name
    if not (p / "manifest.json").is_file():
        raise UnknownNameError("bundled trace set", name, [q.name for q in bundled_paths()])
    return p


ROUTING_DIR = Path(__file__).parent / "routing"

# (small, large): bundled sets on the same questions, for certified cascades: the 0.5B and 1.5B models,
# and the 0.5B model answering directly against the same model reasoning (the think-or-not gate)
BUNDLED_CASCADES = (("gsm8k_qwen05", "gsm8k_qwen15"), ("gsm8k_qwen05_direct", "gsm8k_qwen05"))


def bundled_routing_paths() -> list[Path]:
    """Weak/strong response files bundled with the package: RouteLLM's CSV layout and GSM8K's example solutions
    (see data/routing/README.md)."""
    return sorted(ROUTING_DIR.glob("*.gz")) if ROUTING_DIR.is_dir() else []


def bundled_cascade_pairs() -> list[tuple[Path, Path]]:
    """The bundled (small, large) trace-set pairs whose sets are both present."""
    return [(BUNDLED_DIR / s, BUNDLED_DIR / lg) for s, lg in BUNDLED_CASCADES
            if (BUNDLED_DIR / s / "manifest.json").is_file() and (BUNDLED_DIR / lg / "manifest.json").is_file()]
