"""Drop-in adapter directories: how long from a file copied in to its first answer, and from deletion to gone.

Run: .venv/bin/python bench/bench_watch.py [--runs 5]
The goal (docs/adapters.md, --watch-adapters): a copied GGUF LoRA answers within 2 s and a deleted one is gone
within 2 s. The tests only check that both happen; the time is measured here, on a quiet machine.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from lora_factory import write_lora

from bench.common import Nomoat, models_toml


def seconds_until(condition: Callable[[], bool], limit: float = 120.0) -> float:
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > limit:
            raise RuntimeError(f"not within {limit}s")
        time.sleep(0.01)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        staging, watched = Path(tmp) / "staging", Path(tmp) / "watched"
        staging.mkdir()
        watched.mkdir()
        lora = write_lora(staging / "a.gguf", 1, std=0.05)
        with Nomoat(models_toml(), "--adapter-dir", str(watched), "--watch-adapters") as server, \
                httpx.Client(base_url=server.url, timeout=300) as client:

            def answers(name: str) -> bool:
                body = {"model": name, "prompt": "Hi", "max_tokens": 1}
                return client.post("/v1/completions", json=body).status_code == 200

            def listed(name: str) -> bool:
                return any(m["id"] == name for m in client.get("/v1/models").json()["data"])

            appear, vanish = [], []
            for i in range(args.runs):
                name = f"drop{i}"
                shutil.copy(lora, watched / f"{name}.gguf")
                appear.append(seconds_until(lambda: answers(name)))  # noqa: B023
                (watched / f"{name}.gguf").unlink()
                vanish.append(seconds_until(lambda: not listed(name)))  # noqa: B023
    print(f"watched adapter directory, {args.runs} runs, median (max):")
    print(f"  copied in → first answer : {statistics.median(appear):5.2f} s ({max(appear):.2f})  goal ≤ 2 s")
    print(f"  deleted  → gone          : {statistics.median(vanish):5.2f} s ({max(vanish):.2f})  goal ≤ 2 s")


if __name__ == "__main__":
    main()
