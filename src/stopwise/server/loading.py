"""What the server loads at start-up: policy files, the backends, and the metrics it keeps."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stopwise.backends.base import Backend
from stopwise.errors import ConfigError
from stopwise.rules.calibrate import KEEP_FULL
from stopwise.server.settings import ServeSettings


@dataclass
class LoadedPolicy:
    """A policy file as the server uses it."""

    name: str
    path: str
    family: Any
    index: int
    threshold: float
    epsilon: float
    delta: float
    doc: dict[str, Any]

    @property
    def conditions(self) -> dict[str, Any]:
        return self.doc.get("conditions") or {}

    def summary(self) -> dict[str, Any]:
        cert = self.doc.get("certificate") or {}
        return {
            "policy": self.name,
            "family": self.doc.get("family"),
            "threshold": self.threshold,
            "risk": self.doc.get("risk"),
            "epsilon": self.epsilon,
            "delta": self.delta,
            "certificate": {k: cert.get(k) for k in ("n", "empirical_risk", "p_value", "method") if k in cert},
            "trace_set": (self.doc.get("trace_set") or {}).get("name"),
        }


def load_policy(path: str) -> LoadedPolicy:
    """Read a policy file written by ``stopwise calibrate``; errors name the file and field."""
    from stopwise.policies.registry import get_family

    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"policy file '{path}' does not exist") from exc
    except ValueError as exc:
        raise ConfigError(f"policy file '{path}' is not JSON: {exc}") from exc
    if doc.get("format") != "stopwise-policy":
        raise ConfigError(f"'{path}' is not a stopwise policy file (field 'format')", hint="write one with stopwise calibrate --out")
    for key in ("family", "index", "threshold", "certificate"):
        if key not in doc:
            raise ConfigError(f"policy file '{path}' lacks the field '{key}'")
    if doc["index"] is None and (doc.get("selection") or {}).get("decision") == KEEP_FULL:
        raise ConfigError(f"policy file '{path}': its certified settings cost more than full compute on the calibration questions, so it deploys nothing",
                          hint="serve without this policy (full compute), or calibrate another family")
    if doc["index"] is None:
        raise ConfigError(f"policy file '{path}': calibration certified no threshold (field 'index' is null)", hint="calibrate at a larger epsilon or with more questions")
    fam = get_family(doc["family"], **(doc.get("settings") or {}))
    cert = doc["certificate"]
    return LoadedPolicy(
        name=doc["family"],
        path=str(p),
        family=fam,
        index=int(doc["index"]),
        threshold=float(doc["threshold"]),
        epsilon=float(cert.get("epsilon")),
        delta=float(cert.get("delta")),
        doc=doc,
    )


def make_backend(spec: str, settings: ServeSettings, *, api: str | None = None) -> Backend:
    """The backend a ``--backend`` (or ``--escalate-to``) spec names; ``api`` ("completions" or
    "chat") says how an HTTP upstream is spoken to (default: ``settings.upstream_api``)."""
    if spec.startswith("trace:"):
        import urllib.parse

        from stopwise.engine.trace_backend import TraceStreamBackend

        path, _, query = spec[len("trace:"):].partition("?")
        opts = dict(urllib.parse.parse_qsl(query))
        return TraceStreamBackend(path, rate=float(opts.get("rate", 100)))  # type: ignore[return-value]
    if spec.startswith(("http://", "https://")):
        if (api or settings.upstream_api) == "chat":
            from stopwise.backends.openai_chat import OpenAIChatBackend

            return OpenAIChatBackend(spec, read_timeout=settings.upstream_timeout_s, continuation=settings.continuation)
        from stopwise.backends.openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(spec, read_timeout=settings.upstream_timeout_s)
    from stopwise.backends.llamacpp import EmbeddedBackend

    # slots for one request's chains and probes, and for one chain per concurrent request; past
    # that, requests wait in line for slots (the backend's admission) instead of failing
    return EmbeddedBackend(spec, n_seq_max=min(64, max(8, 2 * settings.max_chains + 2, settings.max_concurrent + 2)),
                           admission_timeout=settings.upstream_timeout_s)


class Metrics:
    """Counters and latency sums in the Prometheus text format (no extra dependency)."""

    def __init__(self) -> None:
        self.c: dict[str, float] = {}
        self.lat: list[float] = []
        self.buckets = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120)

    def inc(self, name: str, v: float = 1.0, **labels: str) -> None:
        key = name + ("{" + ",".join(f'{k}="{v2}"' for k, v2 in sorted(labels.items())) + "}" if labels else "")
        self.c[key] = self.c.get(key, 0.0) + v

    def observe(self, seconds: float) -> None:
        self.lat.append(seconds)

    def render(self) -> str:
        lines = []
        for k in sorted(self.c):
            lines.append(f"stopwise_{k} {self.c[k]:g}")
        for b in self.buckets:
            lines.append(f'stopwise_request_seconds_bucket{{le="{b}"}} {sum(1 for x in self.lat if x <= b)}')
        lines.append(f'stopwise_request_seconds_bucket{{le="+Inf"}} {len(self.lat)}')
        lines.append(f"stopwise_request_seconds_sum {sum(self.lat):g}")
        lines.append(f"stopwise_request_seconds_count {len(self.lat)}")
        return "\n".join(lines) + "\n"
