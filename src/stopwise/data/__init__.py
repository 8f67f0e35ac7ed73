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
