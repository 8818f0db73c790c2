"""What structured output costs: single-client tok/s of free text against grammar-constrained JSON.

Run: .venv/bin/python bench/bench_structured.py [--tokens 128] [--runs 3]
One `nomoat serve` (embedded SmolLM2-135M, 2 threads); greedy; exactly --tokens tokens each
(end-of-generation banned, and the schema's string is long enough never to close first). The
three kinds run interleaved, --runs times; the table gives the median tok/s, end to end.
A forced tool call (`tool_choice: "required"`) uses the same grammar machinery as json_schema.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import NO_EOG, Nomoat, models_toml

STORY = {"type": "object", "properties": {"story": {"type": "string", "minLength": 2000, "maxLength": 4000}},
         "required": ["story"]}
KINDS = {
    "free text": {},
    "json_schema (a long string)": {"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": STORY}}},
    "json_object": {"response_format": {"type": "json_object"}},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rates: dict[str, list[float]] = {k: [] for k in KINDS}
    with Nomoat(models_toml()) as server, httpx.Client(timeout=300) as c:
        body = {"messages": [{"role": "user", "content": "Tell a long story about a dragon, as JSON."}],
                "max_tokens": args.tokens, "temperature": 0, "logit_bias": NO_EOG}
        c.post(server.url + "/v1/chat/completions", json={**body, "max_tokens": 4})  # warm-up
        for _ in range(args.runs):
            for kind, extra in KINDS.items():
                t = time.perf_counter()
                r = c.post(server.url + "/v1/chat/completions", json={**body, **extra}).json()
                n = r["usage"]["completion_tokens"]
                assert n == args.tokens, r
                rates[kind].append(n / (time.perf_counter() - t))
    print(f"tokens={args.tokens} runs={args.runs} (interleaved; median (min–max) tok/s, end to end)")
    print("| output | tok/s |")
    print("|---|---|")
    for kind, values in rates.items():
        print(f"| {kind} | {statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f}) |")


if __name__ == "__main__":
    main()
