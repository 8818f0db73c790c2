"""Single-client streaming decode speed of `nomoat serve` against llama-cpp-python's raw decode loop.

Run: .venv/bin/python bench/bench_decode.py [--tokens 128] [--runs 5] [--threads 2]
Both use the embedded SmolLM2-135M Q4_1, the same threads and context size, greedy decoding,
and decode exactly --tokens tokens (end-of-generation tokens are banned).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import llama_cpp

from bench.common import NO_EOG, Nomoat, models_toml, stream_chat
from nomoat.config import embedded_model_path

PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


def raw_decode(tokens: int, threads: int, n_ctx: int) -> float:
    """llama.cpp through llama-cpp-python's low-level API: greedy decode, one token per llama_decode."""
    cb = llama_cpp.llama_log_callback(lambda level, text, data: None)
    llama_cpp.llama_log_set(cb, ctypes.c_void_p(0))
    mparams = llama_cpp.llama_model_default_params()
    mparams.use_extra_bufts = False
    model = llama_cpp.llama_model_load_from_file(str(embedded_model_path()).encode(), mparams)
    vocab = llama_cpp.llama_model_get_vocab(model)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_threads, cparams.n_threads_batch = n_ctx, 512, threads, threads
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    text = b"<|im_start|>user\nTell me a long story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n"
    buf = (llama_cpp.llama_token * 512)()
    n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, 512, False, True)
    batch = llama_cpp.llama_batch_init(512, 0, 1)
    for i in range(n):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.seq_id[i][0], batch.logits[i] = buf[i], i, 1, 0, i == n - 1
    batch.n_tokens = n
    assert llama_cpp.llama_decode(ctx, batch) == 0
    sampler = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    llama_cpp.llama_sampler_chain_add(sampler, llama_cpp.llama_sampler_init_greedy())
    pos = n
    start = time.perf_counter()
    for _ in range(tokens):
        token = llama_cpp.llama_sampler_sample(sampler, ctx, -1)
        batch.token[0], batch.pos[0], batch.n_seq_id[0], batch.seq_id[0][0], batch.logits[0] = token, pos, 1, 0, True
        batch.n_tokens = 1
        assert llama_cpp.llama_decode(ctx, batch) == 0
        pos += 1
    elapsed = time.perf_counter() - start
    llama_cpp.llama_sampler_free(sampler)
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return tokens / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    n_ctx = 4096
    raw = [raw_decode(args.tokens, args.threads, n_ctx) for _ in range(args.runs)]
    body = {"model": "smollm2-135m", "messages": PROMPT, "max_tokens": args.tokens, "temperature": 0,
            "logit_bias": NO_EOG}
    with Nomoat(models_toml(parallel=4, n_ctx=n_ctx, threads=args.threads)) as server:
        stream_chat(server.url, body)  # warm-up
        runs = [stream_chat(server.url, body) for _ in range(args.runs)]
    served = [r.decode_tps for r in runs]
    e2e = [r.tokens / r.total for r in runs]
    print(f"tokens={args.tokens} runs={args.runs} threads={args.threads} n_ctx={n_ctx}")
    def listed(xs: list[float]) -> str:
        return ", ".join(f"{x:.1f}" for x in xs)

    ttft = statistics.median(r.ttft for r in runs) * 1000
    print(f"llama-cpp-python raw decode      : {statistics.median(raw):7.1f} tok/s (median; {listed(raw)})")
    print(f"nomoat streaming decode (c=1)    : {statistics.median(served):7.1f} tok/s (median; {listed(served)})")
    print(f"nomoat end to end incl. TTFT     : {statistics.median(e2e):7.1f} tok/s; TTFT p50 {ttft:.0f} ms")
    print(f"ratio nomoat/raw (decode)        : {statistics.median(served) / statistics.median(raw):.2f}")


if __name__ == "__main__":
    main()
