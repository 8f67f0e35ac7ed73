"""What every benchmark script shares: the command line and machine it records, writing its JSON,
and (for the ones that start servers) a free port and a wait until the server answers."""

from __future__ import annotations

import json
import os
import platform
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any


def command_line(argv: list[str] | None) -> str:
    """The command that reproduces this run (``argv`` as given to ``main``, else the process's own)."""
    return "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def write_result(path: str | Path, doc: dict[str, Any], note: str = "") -> None:
    """Write ``doc`` as JSON to ``path`` (parents created) and say so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}{note}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")
