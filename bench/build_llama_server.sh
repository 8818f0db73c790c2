#!/usr/bin/env bash
# Builds llama.cpp's own llama-server from the llama.cpp source vendored in the llama-cpp-python
# sdist of the installed version, so both servers run the same llama.cpp. Cached in bench/.cache.
# llama-bench and llama-quantize come from the same build (bench/README.md: the prompt-speed baseline).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-$here/../.venv/bin/python}"
version="$("$python" -c 'import llama_cpp; print(llama_cpp.__version__)')"
cache="$here/.cache/llama-cpp-python-$version"
bin="$cache/build/bin/llama-server"
if [ -x "$bin" ] && [ -x "$cache/build/bin/llama-bench" ]; then echo "$bin"; exit 0; fi
mkdir -p "$cache"
if [ ! -d "$cache/src" ]; then
  "$python" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$cache" >&2
  mkdir -p "$cache/src"
  tar -xzf "$cache"/llama_cpp_python-"$version".tar.gz -C "$cache/src" --strip-components=1
fi
cmake -S "$cache/src/vendor/llama.cpp" -B "$cache/build" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
cmake --build "$cache/build" --target llama-server llama-bench llama-quantize -j "$(nproc)" >&2
echo "$bin"
