#!/usr/bin/env bash
# The GPU check (issue #30), run on a machine with an NVIDIA GPU, the CUDA toolkit (nvcc), cmake and network
# access to PyPI: bench/gpu_check.sh [from anywhere]. Each step prints what it measured beside the card's name:
#   1. builds llama-cpp-python (the version pyproject.toml pins) with CUDA into its own venv (.venv-gpu, or
#      $GPU_VENV), nomoat installed editable with the test extra; llama-server with CUDA beside it, in the background;
#   2. offload: `nomoat serve` of the shipped models.toml (the embedded model, n_gpu_layers "auto" by default) must
#      log every layer on the GPU;
#   3. the suite's GPU-marked tests (`pytest -m gpu`);
#   4. throughput against llama-server on the same card (bench/bench_server.py, c=1 and c=8).
# About 10 minutes on 16 cores, most of it the two CUDA builds (compiled for this card's architecture only); each
# step has a timeout, a failed step does not stop the next, and the exit status says whether any failed. A second
# run reuses both builds.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root" || exit 1
venv="${GPU_VENV:-$root/.venv-gpu}"
py="$venv/bin/python"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
version="$(sed -n 's/.*"llama-cpp-python>=\([0-9.]*\).*/\1/p' pyproject.toml | head -n 1)"
cuda_args="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=native"
card="$(timeout 30 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
card="${card:-no GPU found by nvidia-smi}"
failed=()

say() { printf '[%s] %s\n' "$card" "$*"; }

prefixed() { local line; while IFS= read -r line || [ -n "$line" ]; do say "$line"; done; }

# step NAME SECONDS FUNCTION: runs FUNCTION (exported below) under a timeout, its output beside the card's name.
step() {
  local name=$1 limit=$2 started rc
  shift 2
  started=$(date +%s)
  say "== $name (at most ${limit}s)"
  timeout "$limit" bash -c '"$@"' _ "$@" 2>&1 | prefixed
  rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 0 ]; then
    say "$name: ok in $(( $(date +%s) - started ))s"
  else
    say "$name: FAILED (exit $rc$([ "$rc" -eq 124 ] && printf ', past %ss' "$limit"))"
    failed+=("$name")
  fi
}

card_info() {
  nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version --format=csv
  command -v nvcc >/dev/null && nvcc --version | tail -n 1
}

gpu_ready() {  # the venv has this version of llama-cpp-python, built with a GPU backend that finds a GPU
  [ -x "$py" ] && "$py" - "$version" <<'PY' 2>/dev/null
import sys

import llama_cpp
from nomoat.engine.offload import gpu_device

sys.exit(0 if llama_cpp.__version__ == sys.argv[1] and gpu_device() is not None else 1)
PY
}

make_venv() {
  [ -x "$py" ] || python3 -m venv "$venv" || return 1
  "$py" -m pip install --quiet --upgrade pip
}

build_venv() {
  if gpu_ready; then echo "reusing $venv (llama-cpp-python $version with a GPU backend)"; return 0; fi
  # --no-binary and --no-cache-dir: never a CPU-only wheel from pip's cache; only this card's architecture is
  # compiled (all of CUDA's would take several times as long).
  CMAKE_ARGS="$cuda_args" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$py" -m pip install --no-cache-dir \
    --force-reinstall --no-binary llama-cpp-python "llama-cpp-python==$version" || return 1
  "$py" -m pip install --quiet -e ".[test]" || return 1
  gpu_ready || { echo "llama-cpp-python was built, but ggml lists no GPU"; return 1; }
}

offload() {
  "$py" - "$root/models.toml" "$work" <<'PY'
import re
import socket
import subprocess
import sys
import time

import httpx

config, work = sys.argv[1], sys.argv[2]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
log_path = f"{work}/serve.log"
with open(log_path, "w") as log:
    server = subprocess.Popen([sys.executable, "-m", "nomoat", "serve", "--config", config, "--port", str(port),
                               "--log-level", "info"], stdout=log, stderr=subprocess.STDOUT)
try:
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"nomoat serve did not come up; its log:\n{open(log_path).read()}")
        time.sleep(0.5)
    started = time.perf_counter()
    r = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
        "model": "smollm2-135m", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 64})
    r.raise_for_status()
    print(f"one chat: {r.json()['usage']['completion_tokens']} tokens in {time.perf_counter() - started:.2f}s")
finally:
    server.terminate()
    server.wait(30)
text = open(log_path).read()
for line in text.splitlines():
    if re.search(r"layers on |runs on the CPU|gpu_layers=|offloaded \d+/\d+ layers", line):
        print(line)
placed = re.search(r"model smollm2-135m: (\d+) of (\d+) layers on", text)
if placed is None or placed[1] != placed[2]:
    sys.exit("the default n_gpu_layers did not put every layer on the GPU")
print(f"offload: {placed[1]} of {placed[2]} layers on the GPU by default")
PY
}

gpu_tests() {
  "$py" -m pytest tests -m gpu -n 0 -q -rs -p no:cacheprovider
}

throughput() {
  # The same load on both servers (bench_server.py); its llama-server is the CUDA build above (same cache key),
  # which, like nomoat's default, puts every layer on the GPU (llama.cpp's -ngl defaults to auto).
  LLAMA_CMAKE_ARGS="$cuda_args" PYTHON="$py" "$py" bench/bench_server.py --concurrency 1 8 --tokens 128 \
    --rounds 2 --threads 4
}

export root venv py work version cuda_args
export -f card_info gpu_ready make_venv build_venv offload gpu_tests throughput

say "GPU check of nomoat $(git rev-parse --short HEAD 2>/dev/null) with llama-cpp-python $version"
step card 60 card_info
step venv 120 make_venv
# llama-server (bench/build_llama_server.sh, the same llama.cpp) builds while pip builds llama-cpp-python: both
# compile ggml's CUDA kernels, the longest part of the check.
(LLAMA_CMAKE_ARGS="$cuda_args" LLAMA_CPP_VERSION="$version" PYTHON="$py" timeout 600 bench/build_llama_server.sh \
  > "$work/llama-server-build.log" 2>&1; echo $? > "$work/llama-server-build.rc") &
builder=$!
step "build llama-cpp-python with CUDA" 600 build_venv
step offload 180 offload
step "gpu-marked tests" 300 gpu_tests
wait "$builder"
if [ "$(cat "$work/llama-server-build.rc")" = 0 ]; then
  step "throughput against llama-server" 420 throughput
else
  say "llama-server CUDA build FAILED; its log ends:"
  tail -n 20 "$work/llama-server-build.log"
  failed+=("llama-server build")
fi
if [ "${#failed[@]}" -gt 0 ]; then
  say "failed: ${failed[*]}"
  exit 1
fi
say "every step passed"
