"""Prefix reuse on a sliding-window model (Gemma 3 270M): what the full SWA cache (swa_full, served models'
default) saves and costs against a window-only cache.

Run: .venv/bin/python bench/bench_prefix_swa.py [--tokens 2000] [--n-ctx 4096] [--repeat 3]
No server: the real engine in process (tests/support/real_engine.py), one slot, greedy. For each cache:
the KV memory llama.cpp reports; a long prompt cold; the same prompt again (all but its last token reused);
the prompt with another ending (the shared prefix reused); a short prompt sharing the first 200 tokens after
the long one (a window-only cache dropped them: evaluated again); and the time per generated token at that depth.
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.model import gemma_model_path
from support.real_engine import engine, run

from nomoat.engine.types import GenerationRequest, SamplingParams, TokenPrompt


class KVSize(logging.Handler):
    """The KV cache sizes llama.cpp logs while a context is created."""

    def __init__(self) -> None:
        super().__init__()
        self.mib: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"llama_kv_cache: size = +([\d.]+) MiB", record.getMessage())
        if found:
            self.mib.append(float(found.group(1)))


def timed(eng, prompt: list[int], max_tokens: int) -> tuple[float, int]:
    started = time.perf_counter()
    request = GenerationRequest(prompt=TokenPrompt(prompt), sampling=SamplingParams(temperature=0.0),
                                max_tokens=max_tokens)
    events = run(eng, request)[0]
    usage = events[-1].usage
    assert usage is not None and events[-1].error is None
    return time.perf_counter() - started, usage.cached_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sizes = KVSize()
    logging.getLogger("nomoat.llama_cpp").addHandler(sizes)
    logging.getLogger("nomoat.llama_cpp").setLevel(logging.DEBUG)  # where llama.cpp logs its KV sizes
    for swa_full in (True, False):
        sizes.mib.clear()
        with engine(path=gemma_model_path(), n_ctx=args.n_ctx, n_batch=512, parallel=1, swa_full=swa_full) as eng:
            text = " ".join(f"Line {i}: the value of item {i * 37 % 101} is {i * 53 % 97}." for i in range(400))
            long = eng.model.tokenize(text, add_bos=True)[:args.tokens]
            other = long[:-20] + eng.model.tokenize(" And now something else entirely:", add_bos=False)
            short = long[:200] + eng.model.tokenize(" So the answer is", add_bos=False)
            rows: dict[str, list[float]] = {}
            cached: dict[str, int] = {}
            for _ in range(args.repeat):
                timed(eng, short, 1)  # the slot holds nothing of `long`
                for name, prompt in (("cold (200 reused)", long), ("same again", long), ("other ending", other),
                                     ("short after long", short)):
                    seconds, cached[name] = timed(eng, prompt, 1)
                    rows.setdefault(name, []).append(seconds)
                timed(eng, long, 1)
                seconds, _ = timed(eng, long, 33)
                rows.setdefault("decode (per token)", []).append((seconds - min(rows["same again"])) / 32)
        print(f"swa_full={swa_full}: KV {sum(sizes.mib):.1f} MiB, prompt {len(long)} tokens, n_ctx {args.n_ctx}")
        for name, values in rows.items():
            note = f"  cached {cached[name]}" if name in cached else ""
            print(f"  {name:20s} {statistics.median(values) * 1000:8.1f} ms{note}")


if __name__ == "__main__":
    main()
