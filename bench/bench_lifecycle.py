"""Model residency: a cold request (load + first token) against a warm one, RSS around a load and an unload,
and the time to switch between two models under a budget that holds one.

Run: .venv/bin/python bench/bench_lifecycle.py [--repeat 5] [--n-ctx 4096] [--parallel 4]
One server, two models: the embedded SmolLM2 file ("a") and a copy of it ("b", another file, so its
pages are its own), on demand, `memory_budget` 1.5 model estimates. Each measurement is a median of
`--repeat` (the cold ones unload first through POST /models/unload). Goals (issue #14): a cold first
token within 1 s on 2 cores; RSS after an unload back within 10 % of before the load.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Nomoat, stream_chat
from nomoat.config import ModelConfig, embedded_model_path
from nomoat.residency.footprint import estimate

BODY = {"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 4, "temperature": 0}


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def status(url: str, model: str) -> str:
    cards = httpx.get(url + "/models", timeout=30).json()["data"]
    return str(next(c["status"] for c in cards if c["id"] == model))


def unload(url: str, model: str) -> None:
    httpx.post(url + "/models/unload", json={"model": model}, timeout=60).raise_for_status()
    while status(url, model) != "unloaded":
        time.sleep(0.05)


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    config = ModelConfig(name="a", path=str(embedded_model_path()), n_ctx=args.n_ctx, parallel=args.parallel)
    need = estimate(config).total()
    with tempfile.TemporaryDirectory() as copy_dir:
        copy = shutil.copy(embedded_model_path(), Path(copy_dir) / "copy.gguf")
        models = "".join(
            f'[[models]]\nname = "{name}"\npath = "{path}"\nn_ctx = {args.n_ctx}\nparallel = {args.parallel}\n'
            f"n_threads = {args.threads}\n"
            for name, path in (("a", embedded_model_path()), ("b", copy)))
        toml = f'default_model = "a"\n[server]\nmemory_budget = {int(need * 1.5)}\n' + models
        with Nomoat(toml) as srv:
            run(srv, args.repeat, need)


def run(srv: Nomoat, repeat: int, need: int) -> None:
    url, pid = srv.url, srv.server.proc.pid
    cold, warm, before, loaded, after = [], [], [], [], []
    for _ in range(repeat):
        unload(url, "a")
        unload(url, "b")
        before.append(rss(pid))
        cold.append(stream_chat(url, {**BODY, "model": "a"}).ttft)
        loaded.append(rss(pid))
        warm.append(stream_chat(url, {**BODY, "model": "a"}).ttft)
        unload(url, "a")
        after.append(rss(pid))
    switches = []
    for i in range(repeat * 2):
        model = "ab"[i % 2]
        started = time.perf_counter()
        stream_chat(url, {**BODY, "model": model})
        switches.append(time.perf_counter() - started)
    med = statistics.median
    print(f"estimate per model {mib(need)}; medians of {repeat}")
    print("| measure | value |")
    print("|---|---|")
    print(f"| cold first token (load + prefill + 1 token) | {med(cold) * 1000:.0f} ms |")
    print(f"| warm first token | {med(warm) * 1000:.0f} ms |")
    print(f"| RSS before the load | {mib(med(before))} |")
    print(f"| RSS loaded (after one request) | {mib(med(loaded))} (+{mib(med(loaded) - med(before))}) |")
    print(f"| RSS after the unload | {mib(med(after))} ({(med(after) / med(before) - 1) * 100:+.1f} % of before) |")
    print(f"| switch a <-> b under a one-model budget (whole 4-token request) | {med(switches) * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
