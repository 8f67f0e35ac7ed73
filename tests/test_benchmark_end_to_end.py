"""Smoke run of benchmarks/end_to_end.py: calibrate, serve (SmolLM2, the fast test model), query with the
openai client under `off` and the calibrated policy, write JSON. The real run uses the embedded 0.5B model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "end_to_end.py"


def test_end_to_end_smoke(tmp_path, smollm2_path):
    out = tmp_path / "e2e.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--model", "smollm2", "--questions", "2", "--max-tokens", "32",
                        "--epsilon", "0.2", "--concurrency", "2", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    assert doc["policy"] == "adaptive_consistency" and doc["certificate"]["certified"]
    assert doc["off"]["questions"] == doc["policy_run"]["questions"] == 2
    assert doc["off"]["chains"] == 2 and doc["policy_run"]["chains"] >= 2
    vote4 = doc["setups"]["off-vote4"]  # the self-consistency client: 4 passthrough requests per question
    assert vote4["questions"] == 2 and vote4["chains"] == 8 and vote4["tokens"] > doc["off"]["tokens"]
    assert 0 <= doc["policy_run"]["disagreement_with_full"] <= 1
    assert all(row["wall_s"] > 0 and row["tokens"] > 0 for row in doc["rows"])
