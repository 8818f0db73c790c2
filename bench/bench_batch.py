"""Raw llama.cpp decode steps of 8 sequences, under the batch layouts and context settings the engine could use.

Run: .venv/bin/python bench/bench_batch.py [--steps 32] [--repeat 5] [--threads 2] [--only NAME ...]
No server and no HTTP: each scenario builds its contexts with llama-cpp-python's low-level API on
one loaded model, prefills 8 sequences with the same --prompt-len-token prompt, then times --steps decode
steps (one token per sequence per step, logits for every sequence, as the engine asks). Scenarios
run interleaved, round-robin, --repeat times, so machine noise hits them all alike; the table
gives the median and range of tok/s per scenario.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import llama_cpp
from lora_factory import write_lora

from nomoat.config import embedded_model_path

N_SEQ = 8
SHUFFLED = [5, 2, 7, 0, 1, 3, 4, 6]  # what admission order leaves after a few requests come and go


@dataclass
class Scenario:
    """Contexts to build and, per step, the llama_decode calls: (context index, adapter set, seq ids)."""

    name: str
    calls: list[tuple[int, tuple[int, ...], list[int]]]
    n_contexts: int = 1
    ctx_adapters: list[tuple[int, ...]] = field(default_factory=list)  # fixed set per context, if any
    unified: bool = False
    flash: int = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
    n_ubatch: int = 512


def scenarios() -> list[Scenario]:
    seq = list(range(N_SEQ))
    a, b = (1,), (2,)
    return [
        Scenario("8 seqs, ids in order, 1 call", [(0, (), seq)]),
        Scenario("8 seqs, ids shuffled, 1 call", [(0, (), SHUFFLED)]),
        Scenario("8 seqs, shuffled, kv_unified", [(0, (), SHUFFLED)], unified=True),
        Scenario("8 seqs, in order, kv_unified", [(0, (), seq)], unified=True),
        Scenario("8 seqs, in order, flash_attn off", [(0, (), seq)], flash=llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED),
        Scenario("7 of 8 seqs, id gap (0-2,4-7)", [(0, (), [0, 1, 2, 4, 5, 6, 7])]),
        Scenario("7 of 8 seqs, in order (0-6)", [(0, (), [0, 1, 2, 3, 4, 5, 6])]),
        Scenario("8 seqs under A, 1 call", [(0, a, seq)]),
        Scenario("8 seqs under A, 1 call, kv_unified", [(0, a, seq)], unified=True),
        Scenario("8 base seqs in 3 calls", [(0, (), [0, 1, 2]), (0, (), [3, 4, 5]), (0, (), [6, 7])]),
        Scenario("mixed none/A/B, 3 calls, switching", [(0, (), [0, 1, 2]), (0, a, [3, 4, 5]), (0, b, [6, 7])]),
        Scenario("mixed, 3 calls, switching, kv_unified", [(0, (), [0, 1, 2]), (0, a, [3, 4, 5]), (0, b, [6, 7])],
                 unified=True),
        Scenario("mixed none/A/B, 3 contexts", [(0, (), [0, 1, 2]), (1, a, [0, 1, 2]), (2, b, [0, 1])],
                 n_contexts=3, ctx_adapters=[(), a, b]),
        Scenario("mixed, 3 unified contexts", [(0, (), [0, 1, 2]), (1, a, [0, 1, 2]), (2, b, [0, 1])],
                 n_contexts=3, ctx_adapters=[(), a, b], unified=True),
    ]


class Bench:
    def __init__(self, threads: int, n_ctx: int, adapters: list[Path], prompt_len: int) -> None:
        self.threads, self.n_ctx = threads, n_ctx
        mparams = llama_cpp.llama_model_default_params()
        mparams.use_extra_bufts = False
        self.model = llama_cpp.llama_model_load_from_file(str(embedded_model_path()).encode(), mparams)
        # Adapter index 0 is "none"; 1 and 2 are the files.
        self.adapters = [None] + [llama_cpp.llama_adapter_lora_init(self.model, str(p).encode()) for p in adapters]
        self.batch = llama_cpp.llama_batch_init(512, 0, 1)
        vocab = llama_cpp.llama_model_get_vocab(self.model)
        text = b"<|im_start|>user\nTell me a long story about a lighthouse keeper who finds a map.<|im_end|>\n"
        buf = (llama_cpp.llama_token * 256)()
        n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, 256, False, True)
        self.prompt = (list(buf[:n]) * (prompt_len // n + 1))[:prompt_len]

    def context(self, sc: Scenario) -> llama_cpp.llama_context_p:
        p = llama_cpp.llama_context_default_params()
        p.n_ctx = self.n_ctx * N_SEQ
        p.n_seq_max = N_SEQ
        p.kv_unified = sc.unified
        p.n_batch = 512
        p.n_ubatch = sc.n_ubatch
        p.flash_attn_type = sc.flash
        p.n_threads = p.n_threads_batch = self.threads
        p.no_perf = True
        ctx = llama_cpp.llama_init_from_model(self.model, p)
        assert ctx
        return ctx

    def set_adapters(self, ctx, current: dict, key: tuple[int, ...]) -> None:
        if current.get(id(ctx), ()) == key:
            return
        n = len(key)
        handles = (llama_cpp.llama_adapter_lora_p_ctypes * max(n, 1))(*[self.adapters[i] for i in key])
        scales = (ctypes.c_float * max(n, 1))(*[1.0] * n)
        assert llama_cpp.llama_set_adapters_lora(ctx, handles, n, scales) == 0
        current[id(ctx)] = key

    def decode(self, ctx, items: list[tuple[int, list[int], int]], logits_last: bool = True) -> None:
        """items: (seq id, tokens, first position)."""
        batch, n = self.batch, 0
        for seq_id, tokens, pos in items:
            for j, tok in enumerate(tokens):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = tok, pos + j, 1
                batch.seq_id[n][0] = seq_id
                batch.logits[n] = logits_last and j == len(tokens) - 1
                n += 1
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(ctx, batch)
        assert rc == 0, rc

    def run(self, sc: Scenario, contexts: list, current: dict, steps: int) -> float:
        for ctx in contexts:
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        n_tokens = 0
        for ci, key, seqs in sc.calls:
            self.set_adapters(contexts[ci], current, key)
            for s in seqs:
                self.decode(contexts[ci], [(s, self.prompt, 0)])
        start = time.perf_counter()
        for step in range(steps):
            pos = len(self.prompt) + step
            for ci, key, seqs in sc.calls:
                self.set_adapters(contexts[ci], current, key)
                self.decode(contexts[ci], [(s, [100 + (step * 7 + s) % 1000], pos) for s in seqs])
                n_tokens += len(seqs)
        return n_tokens / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=1024, help="context per sequence")
    ap.add_argument("--prompt-len", type=int, default=40, help="tokens each sequence holds before the timed steps")
    ap.add_argument("--only", nargs="*", help="substrings of scenario names to run")
    args = ap.parse_args()
    quiet = llama_cpp.llama_log_callback(lambda level, text, data: None)
    llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))
    with tempfile.TemporaryDirectory() as tmp:
        loras = [write_lora(Path(tmp) / f"{n}.gguf", i + 1, rank=8, std=0.02) for i, n in enumerate("ab")]
        bench = Bench(args.threads, args.n_ctx, loras, args.prompt_len)
    chosen = [s for s in scenarios() if not args.only or any(o in s.name for o in args.only)]
    built = {}
    current: dict = {}
    for sc in chosen:
        built[sc.name] = [bench.context(sc) for _ in range(sc.n_contexts)]
        for ctx, key in zip(built[sc.name], sc.ctx_adapters, strict=False):
            bench.set_adapters(ctx, current, key)
        bench.run(sc, built[sc.name], current, 4)  # warm-up: graphs reserved, pages touched
    results: dict[str, list[float]] = {sc.name: [] for sc in chosen}
    for r in range(args.repeat):
        for sc in chosen:
            results[sc.name].append(bench.run(sc, built[sc.name], current, args.steps))
        print(f"round {r + 1}/{args.repeat} done", file=sys.stderr, flush=True)
    base = statistics.median(results[chosen[0].name])
    print(f"threads={args.threads} n_ctx/seq={args.n_ctx} prompt={args.prompt_len} steps={args.steps} "
          f"repeat={args.repeat} (interleaved)")
    print("| scenario | tok/s median | min–max | vs first |")
    print("|---|---|---|---|")
    for sc in chosen:
        xs = results[sc.name]
        med = statistics.median(xs)
        print(f"| {sc.name} | {med:.1f} | {min(xs):.1f}–{max(xs):.1f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
