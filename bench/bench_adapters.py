"""Per-request LoRA costs: adapter switch between requests, and single-client tok/s with 0, 1 and 2 adapters.

Run: .venv/bin/python bench/bench_adapters.py [--tokens 128] [--runs 5] [--switch-requests 40]
Adapters are random rank-8 GGUF LoRAs on q, k, v, o, gate, up and down of every block of the
embedded SmolLM2-135M (the heaviest case); written to a temporary directory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from lora_factory import DIMS, write_lora

from bench.common import NO_EOG, Nomoat, models_toml, stream_chat

PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


def request_latency(client: httpx.Client, url: str, model: str) -> float:
    """One prompt token evaluated plus one generated: a request dominated by fixed costs."""
    body = {"model": model, "prompt": "Hi", "max_tokens": 1, "temperature": 0}
    start = time.perf_counter()
    r = client.post(url + "/v1/completions", json=body)
    r.raise_for_status()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--switch-requests", type=int, default=40)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        modules = tuple(DIMS)
        a = write_lora(Path(tmp) / "a.gguf", 1, rank=8, modules=modules, std=0.02)
        b = write_lora(Path(tmp) / "b.gguf", 2, rank=8, modules=modules, std=0.02)
        extra = (f'[[adapters]]\nname = "a"\npath = "{a}"\n[[adapters]]\nname = "b"\npath = "{b}"\n'
                 '[[stacks]]\nname = "ab"\nadapters = { a = 0.5, b = 0.5 }\n')
        with Nomoat(models_toml(parallel=4, extra=extra)) as server, httpx.Client(timeout=300) as client:
            for model in ("smollm2-135m", "a", "b", "ab"):
                request_latency(client, server.url, model)  # warm-up every graph
            n = args.switch_requests
            same = [request_latency(client, server.url, "a") for _ in range(n)]
            alternating = [request_latency(client, server.url, "a" if i % 2 else "b") for i in range(n)]
            base = [request_latency(client, server.url, "smollm2-135m") for _ in range(n)]
            tps = {}
            for model in ("smollm2-135m", "a", "ab"):
                body = {"model": model, "messages": PROMPT, "max_tokens": args.tokens, "temperature": 0,
                        "logit_bias": NO_EOG}
                stream_chat(server.url, body, client)
                tps[model] = statistics.median(stream_chat(server.url, body, client).decode_tps for _ in range(args.runs))
    med = lambda xs: statistics.median(xs) * 1000  # noqa: E731
    print(f"requests of 1 prompt token + 1 generated, {n} each, median latency:")
    print(f"  base only                   : {med(base):6.2f} ms")
    print(f"  same adapter every time     : {med(same):6.2f} ms")
    print(f"  alternating a/b (a switch)  : {med(alternating):6.2f} ms")
    print(f"  cost of a switch            : {med(alternating) - med(same):6.2f} ms")
    print(f"single-client streaming decode, {args.tokens} tokens, median of {args.runs}:")
    print(f"  no adapter                  : {tps['smollm2-135m']:6.1f} tok/s")
    print(f"  one adapter (a)             : {tps['a']:6.1f} tok/s ({tps['a'] / tps['smollm2-135m']:.2f}x)")
    print(f"  stack of two (a 0.5 + b 0.5): {tps['ab']:6.1f} tok/s ({tps['ab'] / tps['smollm2-135m']:.2f}x)")


if __name__ == "__main__":
    main()
