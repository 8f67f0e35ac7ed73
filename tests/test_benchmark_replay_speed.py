"""Smoke test of benchmarks/replay_speed.py on a tiny synthetic set."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "replay_speed.py"


def _load():
    spec = importlib.util.spec_from_file_location("replay_speed_benchmark", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_replay_speed_smoke(tmp_path, capsys):
    mod = _load()
    out = tmp_path / "rs.json"
    rc = mod.main([
        "--tokens", "200000", "--reference-units", "5", "--reference-seconds", "0.5",
        "--repeats", "1", "--seed", "3", "--out", str(out),
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "vec/ref" in printed and str(out) in printed

    data = json.loads(out.read_text())
    for key in ("command", "argv", "machine", "set", "families", "definitions", "grid100_slowest_seconds_at_10M_tokens"):
        assert key in data
    for key in ("cpu_count", "python", "numpy", "pyarrow"):
        assert key in data["machine"]
    assert data["set"]["tokens"] >= 200_000
    assert data["command"].startswith("python benchmarks/replay_speed.py")

    fams = {f["family"]: f for f in data["families"]}
    assert {"token_budget", "first_candidate", "answer_convergence", "probe_confidence", "majority_vote"} <= set(fams)
    ran = [f for f in fams.values() if not f.get("skipped")]
    assert ran
    for f in ran:
        grid100 = ("grid100_seconds", "grid100_seconds_at_10M_tokens") if f["family"] != "combined" else ()  # its path is fixed
        for key in ("grid_points", "vectorized_seconds", "vectorized_token_events_per_s", *grid100,
                    "reference", "ratio_vectorized_over_reference"):
            assert key in f, (f["family"], key)
        assert f["vectorized_seconds"] > 0 and f["ratio_vectorized_over_reference"] > 0
        assert f["family"] == "combined" or len(f["grid100_grid"]) == 100
        ref = f["reference"]
        assert ref["units"] >= 1 and ref["seconds"] > 0 and ref["token_events_per_s"] > 0
        assert ref["matches_vectorized"] is True
