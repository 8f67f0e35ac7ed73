"""Smoke run of benchmarks/cascade.py: certify the cascade policy, serve it with --escalate-to beside a plain
large-model server (SmolLM2 for both, the fast test model), query both with the openai client, write JSON. The
real run uses the embedded 0.5B and 1.5B models on the bundled pair gsm8k_qwen05 / gsm8k_qwen15."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from stopwise.data import bundled_path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cascade.py"


def test_cascade_smoke(tmp_path, smollm2_path):
    out = tmp_path / "cascade.json"
    pair = str(bundled_path("gsm8k_qwen05"))  # the set paired with itself: certifies, and every question is in both
    r = subprocess.run([sys.executable, str(SCRIPT), "--small", pair, "--large", pair, "--small-model", "smollm2",
                        "--large-model", "smollm2", "--questions", "2", "--max-tokens", "32", "--epsilon", "0.2",
                        # one set stands in for both models: price a small-model token at a tenth, so that two small
                        # chains cost less than one large one and the certified cascade pays (at the default price
                        # of one model, 1, it never can, and nothing is served)
                        "--weak-token-price", "0.1", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    assert doc["smoke"] and doc["certificate"]["certified"] and doc["chains"] == 2
    c, lg = doc["cascade"], doc["always_large"]
    assert c["questions"] == lg["questions"] == 2 and lg["small_tokens"] == 0 and lg["large_tokens"] > 0
    assert c["small_tokens"] > 0 and 0.0 <= c["escalated"] <= 1.0
    for row in doc["rows"]:
        assert row["wall_s"] > 0
        if row["setup"] == "cascade":
            assert row["escalated"] == (row["large_tokens"] > 0), row
            assert row["answered_by"] is not None
