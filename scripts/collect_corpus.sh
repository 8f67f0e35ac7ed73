#!/bin/bash
# Collect the bundled logprob corpora with the embedded 0.5B model (resumable: run it
# again to continue where it stopped; arguments after the corpus name are passed on,
# e.g. --seed-from). The working state lives in $STOPWISE_CORPUS, by default corpus/ in
# this repository, and is committed between sessions (these machines do not keep files
# outside the repository from one session to the next): stop the collector, run
#   stopwise collect --out corpus/gsm8k_qwen05 --compact
# (this session's small chunk files become one lossless file) and commit corpus/.
# `stopwise collect --assemble-partial --out DIR` writes what is complete.
#
#   scripts/collect_corpus.sh gsm8k      # 600 GSM8K test questions x 4 chains, 16 on the first 64
#   scripts/collect_corpus.sh gsm8k15    # the 1.5B model, 1 chain, no probes, on the first 124 of the same questions
#                                        # (the large model of the 0.5B-to-1.5B cascade)
#   scripts/collect_corpus.sh gsm8k-direct  # the 0.5B model answering directly (no chain of thought), greedy,
#                                        # on the same 124 questions (the think-or-not gate)
#   scripts/collect_corpus.sh chain-sum  # reasoning-gym chain_sum (seed 0, 300 questions) x 4 chains, the same settings
#                                        # as gsm8k (one chain right on 4 of 12 in a pilot; 152 tokens a chain)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${STOPWISE_CORPUS:-corpus}"
WHAT="${1:-gsm8k}"
shift || true
mkdir -p "$OUT"
case "$WHAT" in
  gsm8k)
    exec stopwise collect --dataset gsm8k --model embedded --questions 600 --chains 4 --chains-first 64:16 \
      --max-tokens 384 --probe-every 32 --top-k 5 --seed 0 --batch 16 --out "$OUT/gsm8k_qwen05" "$@" ;;
  gsm8k15)
    exec stopwise collect --dataset gsm8k --model embedded-1.5b --questions 124 --chains 1 --max-tokens 384 \
      --probe-every 0 --no-cue-probes --top-k 5 --seed 0 --batch 8 --out "$OUT/gsm8k_qwen15" "$@" ;;
  gsm8k-direct)
    exec stopwise collect --dataset gsm8k --model embedded --questions 124 --chains 1 --max-tokens 16 --temperature 0 \
      --probe-every 0 --no-cue-probes --direct --top-k 5 --seed 0 --batch 8 --out "$OUT/gsm8k_qwen05_direct" "$@" ;;
  chain-sum)
    exec stopwise collect --dataset reasoning-gym:chain_sum --size 300 --model embedded --questions 300 --chains 4 \
      --max-tokens 384 --probe-every 32 --top-k 5 --seed 0 --batch 16 --out "$OUT/chain_sum_qwen05" "$@" ;;
  *) echo "unknown corpus '$WHAT' (known: gsm8k, gsm8k15, gsm8k-direct, chain-sum)" >&2; exit 2 ;;
esac
