"""Is copying a cached prefix into another sequence (llama_memory_seq_cp) cheaper than prefilling it?

Run: .venv/bin/python bench/bench_prefix_copy.py [--lengths 64 128 256 512 1024] [--repeat 5] [--n-ctx 4096]
No server: one context built as the engine builds it (a KV stream per sequence, `parallel` 8).
Sequence 0 holds a prompt of L tokens. Then, interleaved and repeated, two ways to give sequence 1
the same prompt and its first logits: prefill all L tokens; or copy sequence 0 into it and decode
only the last token. With a stream per sequence llama.cpp copies the whole stream buffer (K and V
of n_ctx cells in every layer), so the copy costs the same whatever L is; the prefill grows with L.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import llama_cpp

from nomoat.config import embedded_model_path
from nomoat.engine.model import LoadedModel, ModelSpec


def decode(ctx, batch, tokens: list[int], seq: int, start: int) -> None:
    for i, t in enumerate(tokens):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, start + i, 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = i == len(tokens) - 1
    batch.n_tokens = len(tokens)
    assert llama_cpp.llama_decode(ctx, batch) == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    model = LoadedModel(ModelSpec(name="m", path=embedded_model_path(), n_ctx=args.n_ctx, n_batch=2048,
                                  parallel=8, n_threads=args.threads))
    ctx, mem = model.ctx, llama_cpp.llama_get_memory(model.ctx)
    batch = llama_cpp.llama_batch_init(2048, 0, 8)
    text = " ".join(f"word{i}" for i in range(4000))
    print(f"n_ctx per sequence {model.n_ctx}, threads {args.threads}, repeat {args.repeat} (interleaved)")
    print("| prompt tokens | prefill ms | copy + last token ms | copy / prefill |")
    print("|---|---|---|---|")
    for length in args.lengths:
        prompt = model.tokenize(text, add_bos=False, special=False)[:length]
        llama_cpp.llama_memory_clear(mem, True)
        decode(ctx, batch, prompt, 0, 0)
        prefill, copy = [], []
        for _ in range(args.repeat):
            llama_cpp.llama_memory_seq_rm(mem, 1, -1, -1)
            t = time.perf_counter()
            decode(ctx, batch, prompt, 1, 0)
            prefill.append(time.perf_counter() - t)
            llama_cpp.llama_memory_seq_rm(mem, 1, -1, -1)
            t = time.perf_counter()
            llama_cpp.llama_memory_seq_cp(mem, 0, 1, -1, -1)
            llama_cpp.llama_memory_seq_rm(mem, 1, length - 1, -1)
            decode(ctx, batch, prompt[-1:], 1, length - 1)
            copy.append(time.perf_counter() - t)
        p, c = statistics.median(prefill) * 1000, statistics.median(copy) * 1000
        print(f"| {length} | {p:.1f} | {c:.1f} | {c / p:.2f} |")
    llama_cpp.llama_batch_free(batch)
    model.close()


if __name__ == "__main__":
    main()
