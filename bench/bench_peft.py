"""PEFT adapter intake: conversion time, cached load time, and POST /v1/adapters of a PEFT directory cold vs cached.

Run: .venv/bin/python bench/bench_peft.py [--rank 16] [--runs 5]
The adapter is a random rank-`rank` PEFT LoRA (float32 safetensors) on q, k, v, o, gate, up and down of
every block of the embedded SmolLM2-135M, written by tests/peft_factory.py to a temporary directory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from peft_factory import write_peft_adapter

from bench.common import Nomoat, models_toml
from nomoat.adapters.files import prepare_adapter
from nomoat.adapters.peft import convert_peft_to_gguf
from nomoat.config import embedded_model_path
from nomoat.engine.base_info import BaseModelInfo


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def post_ms(client: httpx.Client, url: str, name: str, path: Path) -> float:
    start = time.perf_counter()
    r = client.post(url + "/v1/adapters", json={"name": name, "path": str(path)})
    elapsed = time.perf_counter() - start
    r.raise_for_status()
    client.delete(url + f"/v1/adapters/{name}").raise_for_status()
    return elapsed * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    med = lambda xs: statistics.median(xs) * 1000  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        base_seconds = [timed(lambda: BaseModelInfo.from_gguf(embedded_model_path())) for _ in range(2)]
        base = BaseModelInfo.from_gguf(embedded_model_path())
        # One directory per cold run: a new content hash each time, so nothing is served from the cache.
        dirs = [write_peft_adapter(tmp / "adapters" / f"peft{i}", base, r=args.rank, lora_alpha=2.0 * args.rank,
                                   seed=i).path for i in range(args.runs + 1)]
        weights_mb = (dirs[0] / "adapter_model.safetensors").stat().st_size / 1e6
        convert = [timed(lambda: convert_peft_to_gguf(dirs[0], base, tmp / "out.gguf")) for _ in range(args.runs)]
        gguf_mb = (tmp / "out.gguf").stat().st_size / 1e6
        cache = tmp / "cache"
        first = timed(lambda: prepare_adapter(dirs[0], base, cache))
        cached = [timed(lambda: prepare_adapter(dirs[0], base, cache)) for _ in range(args.runs)]
        plain = [timed(lambda: prepare_adapter(tmp / "out.gguf", base, cache)) for _ in range(args.runs)]

        server_args = ("--adapter-dir", str(tmp), "--state-dir", str(tmp / "state"))
        with Nomoat(models_toml(), *server_args) as server, httpx.Client(timeout=300) as client:
            post_ms(client, server.url, "warm-up", tmp / "out.gguf")
            cold = [post_ms(client, server.url, f"cold{i}", d) for i, d in enumerate(dirs[1:])]
            warm = [post_ms(client, server.url, f"warm{i}", dirs[1]) for i in range(args.runs)]
            gguf_post = [post_ms(client, server.url, f"gguf{i}", tmp / "out.gguf") for i in range(args.runs)]

    print(f"rank-{args.rank} PEFT adapter on all 7 modules x {base.n_layer} blocks of SmolLM2-135M: "
          f"{weights_mb:.1f} MB safetensors -> {gguf_mb:.1f} MB GGUF; median of {args.runs}")
    print(f"  read base GGUF metadata (convert-lora only)  : {min(base_seconds) * 1000:8.1f} ms (best of 2)")
    print(f"  convert_peft_to_gguf                         : {med(convert):8.1f} ms")
    print(f"  prepare_adapter, first (convert + check)     : {first * 1000:8.1f} ms (once)")
    print(f"  prepare_adapter, cached (hash + check)       : {med(cached):8.1f} ms")
    print(f"  prepare_adapter of the GGUF itself           : {med(plain):8.1f} ms")
    print("through the server, POST /v1/adapters (+ llama.cpp load), wall time:")
    print(f"  PEFT dir, cold (converted)                   : {statistics.median(cold):8.1f} ms")
    print(f"  PEFT dir, cached                             : {statistics.median(warm):8.1f} ms")
    print(f"  the GGUF file                                : {statistics.median(gguf_post):8.1f} ms")


if __name__ == "__main__":
    main()
