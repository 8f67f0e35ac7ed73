#!/bin/bash
# Build llama-cpp-python for this machine's AVX-512 CPU (AMX off: its kernel crashes here, see
# ../shared/data/README.md) into build/native/site, for collection only:
#
#   scripts/build_native_llama.sh
#   PYTHONPATH=build/native/site scripts/collect_corpus.sh chain-sum
#
# The portable AVX2 build that `.ci/run` installs stays the project's build; this one decodes a
# collection about 1.3x faster here (per-call timings of the same collection, side by side:
# chain steps 276 vs 344 ms, probe steps 165 vs 237 ms). Builds round the logits differently, so
# each collected chain records the build that decoded it (metadata "build") and the assembled
# manifest counts them (provenance notes). About 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
mkdir -p build/native
# each AVX-512 extension only where this CPU has it (AMD EPYC Zen 4 has AVX512_VNNI but not the
# VEX-coded AVX_VNNI: a build with it dies with SIGILL there)
FLAGS="$(grep -m1 '^flags' /proc/cpuinfo)"
ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
has() { [[ " $FLAGS " == *" $1 "* ]]; }
has avx512f && ARGS+=" -DGGML_AVX512=ON"
has avx512vbmi && ARGS+=" -DGGML_AVX512_VBMI=ON"
has avx512_vnni && ARGS+=" -DGGML_AVX512_VNNI=ON"
has avx512_bf16 && ARGS+=" -DGGML_AVX512_BF16=ON"
has avx_vnni && ARGS+=" -DGGML_AVX_VNNI=ON"
echo "CMAKE_ARGS=$ARGS"
rm -rf build/native/wheel build/native/site
CMAKE_ARGS="$ARGS" \
  pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -w build/native/wheel
pip install --no-deps --upgrade --target build/native/site build/native/wheel/llama_cpp_python-"$VERSION"-*.whl
PYTHONPATH=build/native/site python -c "from stopwise.backends.llama_engine import build_info; print(build_info())"
