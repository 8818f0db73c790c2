"""Rerank throughput (documents/s): nomoat's /v1/rerank through HTTP against llama.cpp in process, same file.

Run: .venv/bin/python bench/bench_rerank.py [--docs 64] [--runs 5] [--threads 2]
The file is tests/support/reranker.py's reranker (the test model with rank pooling; a real reranker of the
same size scores at the same speed: the head is one small matmul). llama.cpp runs through llama-cpp-python's
low-level API on one context: each pair alone (llama-server with one slot), and pairs batched as nomoat
batches them (up to n_batch tokens and 64 pairs per llama_decode).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx
import llama_cpp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from oracle import _no_repack
from support.reranker import oracle_pair_tokens, reranker_model_path

from bench.common import Nomoat

N_CTX = 512
QUERY = "Which line mentions the old stone bridge?"


def documents(n: int) -> list[str]:
    return [f"Line {i}: the river bends past the mill{' and the old stone bridge' if i % 7 == 0 else ''}."
            for i in range(n)]


def llama_cpp_rate(path: Path, docs: list[str], runs: int, threads: int, batched: bool) -> float:
    with _no_repack():
        llm = llama_cpp.Llama(str(path), embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_RANK, n_ctx=N_CTX,
                              n_batch=N_CTX, n_ubatch=N_CTX, n_threads=threads, flash_attn=True, verbose=False)
    cparams = llama_cpp.llama_context_default_params()
    cparams.embeddings, cparams.pooling_type = True, llama_cpp.LLAMA_POOLING_TYPE_RANK
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = N_CTX
    cparams.n_seq_max, cparams.kv_unified = 64, True
    cparams.n_threads = cparams.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(llm.model, cparams)
    batch = llama_cpp.llama_batch_init(N_CTX, 0, 1)
    try:
        rates = []
        for _ in range(runs):
            started = time.perf_counter()
            pairs = [oracle_pair_tokens(llm, QUERY, d, None) for d in docs]  # tokenizing counts, as in nomoat
            groups: list[list[list[int]]] = [[]]
            for tokens in pairs:
                used = sum(len(t) for t in groups[-1])
                if groups[-1] and (not batched or used + len(tokens) > N_CTX or len(groups[-1]) >= 64):
                    groups.append([])
                groups[-1].append(tokens)
            for group in groups:
                llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
                n = 0
                for seq, tokens in enumerate(group):
                    for pos, token in enumerate(tokens):
                        batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, pos, 1
                        batch.seq_id[n][0], batch.logits[n] = seq, True
                        n += 1
                batch.n_tokens = n
                assert llama_cpp.llama_decode(ctx, batch) == 0
                _ = [llama_cpp.llama_get_embeddings_seq(ctx, seq)[0] for seq in range(len(group))]
            rates.append(len(docs) / (time.perf_counter() - started))
        return statistics.median(rates)
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llm.close()


def nomoat_rate(path: Path, docs: list[str], runs: int, threads: int) -> float:
    config = (f'[[models]]\nname = "reranker"\npath = "{path}"\nn_ctx = {N_CTX}\nn_batch = {N_CTX}\nparallel = 1\n'
              f'n_threads = {threads}\nload = "startup"\n')
    with Nomoat(config) as server, httpx.Client(base_url=server.url, timeout=600) as client:
        body = {"model": "reranker", "query": QUERY, "documents": docs, "return_documents": False}
        client.post("/v1/rerank", json=body).raise_for_status()  # the context is made on the first request
        rates = []
        for _ in range(runs):
            started = time.perf_counter()
            client.post("/v1/rerank", json=body).raise_for_status()
            rates.append(len(docs) / (time.perf_counter() - started))
        return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    path = reranker_model_path("plain")
    docs = documents(args.docs)
    print(f"{args.docs} documents, median of {args.runs} runs, {args.threads} threads, {path.name}")
    print(f"nomoat /v1/rerank (HTTP)           {nomoat_rate(path, docs, args.runs, args.threads):8.1f} docs/s")
    print(f"llama.cpp in process, batched      {llama_cpp_rate(path, docs, args.runs, args.threads, True):8.1f} docs/s")
    print(f"llama.cpp in process, pair by pair {llama_cpp_rate(path, docs, args.runs, args.threads, False):8.1f} docs/s")


if __name__ == "__main__":
    main()
