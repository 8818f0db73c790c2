#!/usr/bin/env bash
# Builds llama.cpp's own llama-server from the llama.cpp source vendored in the llama-cpp-python
# sdist of the installed version, so both servers run the same llama.cpp. Cached in bench/.cache.
# llama-bench and llama-quantize come from the same build (bench/README.md: the prompt-speed baseline),
# and llama-mtmd-cli (llama.cpp's own image runner, the reference for image work on the same build).
# LLAMA_CMAKE_ARGS adds cmake options (a CUDA build: "-DGGML_CUDA=on"), built in a folder of their own.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-$here/../.venv/bin/python}"
# LLAMA_CPP_VERSION: the version to build when $PYTHON has no llama_cpp yet (bench/gpu_check.sh builds both at once).
version="${LLAMA_CPP_VERSION:-$("$python" -c 'import llama_cpp; print(llama_cpp.__version__)')}"
cache="$here/.cache/llama-cpp-python-$version"
read -r -a extra <<< "${LLAMA_CMAKE_ARGS:-}"
build="$cache/build"
if [ "${#extra[@]}" -gt 0 ]; then build="$cache/build-$(printf '%s' "${extra[*]}" | cksum | cut -d' ' -f1)"; fi
bin="$build/bin/llama-server"
if [ -x "$bin" ] && [ -x "$build/bin/llama-bench" ] && [ -x "$build/bin/llama-mtmd-cli" ]; then echo "$bin"; exit 0; fi
mkdir -p "$cache"
if [ ! -d "$cache/src" ]; then
  "$python" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$cache" >&2
  mkdir -p "$cache/src"
  tar -xzf "$cache"/llama_cpp_python-"$version".tar.gz -C "$cache/src" --strip-components=1
fi
cmake -S "$cache/src/vendor/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "${extra[@]}" >&2
cmake --build "$build" --target llama-server llama-bench llama-quantize llama-mtmd-cli -j "$(nproc)" >&2
echo "$bin"
