"""Long prompts, speculative decoding and KV cache types: nomoat beside llama-server and llama-bench in one run.

Run: .venv/bin/python bench/bench_long.py [--sections long bench quant spec kv smooth] [--repeat N] [--smoke]
Sections (each prints a markdown table; ratios are nomoat / the other):
- long:   retrieval-style chats (a shared system prompt + a distinct document of 1k/2k/4k tokens + a
          question) at c=1 and c=4 on both servers, interleaved: TTFT p50/p95, prompt tokens/s
          (tokens evaluated over TTFT), decode tokens/s.
- bench:  `llama-bench -t T -p 512,2048 -n 64` with repacking and flash attention on and off: the
          prompt-speed ceiling of the same llama.cpp, printed beside the servers' c=1 figures.
- quant:  the model requantised with llama-quantize (Q4_0, Q8_0, Q4_K_M; the source is Q4_1, so
          quality suffers, speed does not) and llama-bench's pp512/tg64 for each.
- spec:   c=1 answers that copy their input (a paragraph with one word changed, a code edit) and free
          chat: nomoat without speculation, with n-gram and with a draft model (the model requantised:
          --spec-draft), llama-server likewise (its ngram-simple and draft-simple with -md).
- kv:     decode tokens/s with an f16 and a q8_0 KV cache, c=1 and c=4, and the KV bytes per token.
- smooth: a running stream's inter-token gaps while a 4k-token prompt is prefilled, on both servers.
--smoke runs each section tiny (for checking the script on a busy machine; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_server import LlamaServer  # noqa: E402
from bench.common import NO_EOG, Nomoat, StreamTiming, models_toml, stream_chat  # noqa: E402
from nomoat.config import embedded_model_path  # noqa: E402
from nomoat.engine.base_info import BaseModelInfo  # noqa: E402
from nomoat.engine.kv import kv_bytes_per_token  # noqa: E402

SYSTEM = ("You are a research assistant. You answer questions about the document the user provides, using only "
          "what the document says. Quote exact phrases when they help, keep answers short, and say so plainly "
          "when the document does not contain the answer. ") * 3
WORDS = [
    "river", "mountain", "harbor", "engine", "council", "winter", "market", "garden", "letter", "station",
    "bridge", "village", "teacher", "doctor", "machine", "history", "summer", "report", "village", "forest",
    "signal", "captain", "museum", "library", "orchard", "factory", "lantern", "island", "weather", "journey",
    "kitchen", "meadow", "theatre", "compass", "quarry", "festival", "railway", "archive",
]
PARAGRAPH = ("The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a can of oil and a rag "
             "for the lens. He had done this for thirty years, through storms and calm nights alike, and he knew "
             "every creak of the old iron steps. When the lamp was lit, he sat by the window and wrote the weather "
             "in a leather book, one line for every night, until the pages were full.")
CODE = ("def summarize(orders):\n    total = 0\n    count = 0\n    for order in orders:\n"
        "        if order.status == 'paid':\n            total += order.amount\n            count += 1\n"
        "    average = total / count if count else 0\n    return {'total': total, 'count': count, "
        "'average': average}\n")
COPY_TASKS = {
    "paragraph, one word changed": f"Repeat this paragraph exactly, but write 'morning' instead of 'evening':\n\n{PARAGRAPH}",
    "code edit": f"Rename the function summarize to paid_summary and show the whole code:\n\n```python\n{CODE}```",
}
CHAT_TASKS = {"free chat": "Tell me a story about a clockmaker who builds a clock that runs backwards."}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def load(url: str, bodies: list[dict], concurrency: int) -> list[StreamTiming]:
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda b: stream_chat(url, b), bodies))


def chat(content: str, tokens: int, system: str | None = None, **extra: object) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    return {"model": "smollm2-135m", "messages": messages, "max_tokens": tokens, "temperature": 0, **extra}


def document(n_tokens: int, seed: int) -> str:
    """A made-up document of about `n_tokens` tokens (this tokenizer: ~1.25 tokens per word and stop)."""
    rng = random.Random(seed)
    words = []
    while len(words) < n_tokens / 1.3:
        words += [rng.choice(WORDS) for _ in range(rng.randint(6, 14))]
        words[-1] += "."
    return " ".join(words)


class Servers:
    """A nomoat and a llama-server on the same model, threads and slots, both up; runs alternate between them."""

    def __init__(self, args: argparse.Namespace, binary: str, nomoat_extra: str = "", llama_extra: list[str] | None = None,
                 n_ctx: int = 5120) -> None:
        self.nomoat = Nomoat(models_toml(parallel=args.slots, n_ctx=n_ctx, threads=args.threads, extra=nomoat_extra))
        self.llama = LlamaServer(binary, args.slots, n_ctx, args.threads, [], extra=llama_extra)

    def __enter__(self) -> Servers:
        self.nomoat.__enter__()
        self.llama.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.nomoat.__exit__()
        self.llama.__exit__()

    def urls(self) -> dict[str, str]:
        return {"nomoat": self.nomoat.url, "llama-server": self.llama.url}


def interleaved(repeat: int, servers: dict[str, str],
                measure: Callable[[str, int], list[StreamTiming]]) -> dict[str, list[StreamTiming]]:
    out: dict[str, list[StreamTiming]] = {name: [] for name in servers}
    for i in range(repeat):
        for name, url in servers.items():
            out[name] += measure(url, i)
    return out


def section_long(args: argparse.Namespace, binary: str) -> dict[int, float]:
    print("\n## Long prompts (retrieval-style: shared system prompt + distinct document)\n")
    print("| prompt | c | server | TTFT p50 / p95 ms | prompt tok/s | decode tok/s | TTFT ratio (p50) |")
    print("|---|---|---|---|---|---|---|")
    pp_c1: dict[int, float] = {}
    with Servers(args, binary, n_ctx=max(args.sizes) + 1024) as servers:
        for size in args.sizes:
            for c in args.concurrency:
                def measure(url: str, run: int, size: int = size, c: int = c) -> list[StreamTiming]:
                    seeds = [hash((size, c, run, k, url)) & 0xFFFF for k in range(c * args.rounds)]
                    bodies = [chat(f"Document:\n{document(size, s)}\n\nQuestion: which places does the document "
                                   "mention most? Answer in one sentence.", args.tokens, SYSTEM, logit_bias=NO_EOG)
                              for s in seeds]
                    # Warm: the shared system prompt is then cached on both, each document is new.
                    load(url, [chat("Document:\nnone\n\nQuestion: hello?", 2, SYSTEM)], 1)
                    return load(url, bodies, c)

                results = interleaved(args.repeat, servers.urls(), measure)
                p50 = {name: statistics.median(t.ttft for t in ts) for name, ts in results.items()}
                for name, ts in results.items():
                    pps = statistics.median(t.evaluated / t.ttft for t in ts)
                    if name == "nomoat" and c == 1:
                        pp_c1[size] = pps
                    ratio = f"{p50['nomoat'] / p50['llama-server']:.2f}" if name == "nomoat" else ""
                    print(f"| {size} | {c} | {name} | {p50[name] * 1000:.0f} / {pct([t.ttft for t in ts], 0.95) * 1000:.0f} | "
                          f"{pps:.0f} | {statistics.median(t.decode_tps for t in ts):.1f} | {ratio} |", flush=True)
    return pp_c1


def llama_bench(binary: str, model: Path, args: argparse.Namespace, *flags: str) -> list[dict]:
    bench = str(Path(binary).parent / "llama-bench")
    cmd = [bench, "-m", str(model), "-t", str(args.threads), "-r", str(args.bench_reps), "-o", "json", *flags]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        print(f"llama-bench {' '.join(flags)} failed ({done.returncode}): {done.stderr.strip()[-300:]}", file=sys.stderr)
        return []
    return json.loads(done.stdout)


def section_bench(args: argparse.Namespace, binary: str, pp_c1: dict[int, float]) -> None:
    print("\n## llama-bench (same llama.cpp, same threads) beside nomoat's c=1 prompt speed\n")
    print("| repack | flash attn | test | llama-bench tok/s | nomoat prompt tok/s (c=1, nearest size) | ratio |")
    print("|---|---|---|---|---|---|")
    prompts = ",".join(str(p) for p in args.bench_prompts)
    for repack in ("0", "1"):
        for fa in ("0", "1"):
            for row in llama_bench(binary, embedded_model_path(), args, "-p", prompts, "-n", str(args.bench_gen),
                                   "--repack", repack, "-fa", fa):
                n_prompt, n_gen, tps = row["n_prompt"], row["n_gen"], row["avg_ts"]
                test = f"pp{n_prompt}" if n_prompt else f"tg{n_gen}"
                ours = ""
                if n_prompt and pp_c1:
                    size = min(pp_c1, key=lambda s: abs(s - n_prompt))
                    ours = f"{pp_c1[size]:.0f} ({size}) | {pp_c1[size] / tps:.2f}"
                print(f"| {repack} | {fa} | {test} | {tps:.1f} | {ours or '— | —'} |", flush=True)


def requantize(binary: str, kind: str, folder: Path, threads: int) -> Path | None:
    """The embedded model requantised to `kind` by llama-quantize, in `folder`; None (reported) when it fails."""
    out = folder / f"model-{kind}.gguf"
    done = subprocess.run([str(Path(binary).parent / "llama-quantize"), "--allow-requantize", str(embedded_model_path()),
                           str(out), kind, str(threads)], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"llama-quantize {kind} failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return out


def section_quant(args: argparse.Namespace, binary: str) -> None:
    print("\n## Quantisations (llama-quantize --allow-requantize from the Q4_1 file), llama-bench\n")
    print("| type | size MiB | pp512 tok/s | tg tok/s |")
    print("|---|---|---|---|")
    source = embedded_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        files = {"Q4_1 (source)": source}
        for kind in args.quants:
            out = requantize(binary, kind, Path(tmp), args.threads)
            if out is not None:
                files[kind] = out
        for kind, path in files.items():
            rows = llama_bench(binary, path, args, "-p", "512", "-n", str(args.bench_gen), "--repack", "0")
            pp = next((r["avg_ts"] for r in rows if r["n_prompt"]), float("nan"))
            tg = next((r["avg_ts"] for r in rows if r["n_gen"]), float("nan"))
            print(f"| {kind} | {path.stat().st_size / 2**20:.0f} | {pp:.1f} | {tg:.1f} |", flush=True)


def section_spec(args: argparse.Namespace, binary: str) -> None:
    print("\n## Speculative decoding, c=1 (answer tok/s: completion tokens over the whole request, TTFT included)\n")
    print(f"Draft model: the same model requantised to {args.spec_draft} (the only draft with this vocabulary here). "
          f"llama-server ngram-simple: size-n {args.llama_ngram_n}, size-m {args.llama_ngram_m or args.spec_n_max}.\n")
    kinds = ("off", "ngram", "draft")
    print("| task | " + " | ".join(f"nomoat {k}" for k in kinds) + " | ngram ×off | draft ×off | "
          + " | ".join(f"llama-server {k}" for k in kinds) + " | ngram ÷ llama | draft ÷ llama |")
    print("|---|" + "---|" * (2 * len(kinds) + 4))
    n = args.spec_n_max
    with tempfile.TemporaryDirectory() as tmp:
        draft = requantize(binary, args.spec_draft, Path(tmp), args.threads)
        if draft is None:
            return
        llama_spec = {
            "ngram": ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", str(args.llama_ngram_n),
                      "--spec-ngram-simple-size-m", str(args.llama_ngram_m or n), "--spec-draft-n-max", str(n)],
            "draft": ["--spec-type", "draft-simple", "-md", str(draft), "--spec-draft-n-max", str(n)],
        }
        nomoat = Nomoat(models_toml(parallel=args.slots, n_ctx=4096, threads=args.threads,
                                    extra=f'draft_model = "{draft}"\n'))
        llama = {k: LlamaServer(binary, args.slots, 4096, args.threads, [], extra=llama_spec.get(k)) for k in kinds}
        with nomoat, llama["off"], llama["ngram"], llama["draft"]:
            for task, prompt in {**COPY_TASKS, **CHAT_TASKS}.items():
                def body(kind: str | None, prompt: str = prompt) -> dict:
                    extra = {"speculative": {"type": kind, "n_max": n}} if kind else {}
                    return chat(prompt, args.spec_tokens, **extra)

                runs = {**{f"nomoat {k}": (nomoat.url, body("none" if k == "off" else k)) for k in kinds},
                        **{f"llama {k}": (llama[k].url, body(None)) for k in kinds}}
                tps: dict[str, list[float]] = {k: [] for k in runs}
                for _ in range(args.repeat):
                    for name, (url, b) in runs.items():
                        timing = stream_chat(url, b)
                        tps[name].append(timing.tokens / timing.total)  # whole answer: bursts of accepted drafts count
                m = {k: statistics.median(v) for k, v in tps.items()}
                print(f"| {task} | " + " | ".join(f"{m[f'nomoat {k}']:.1f}" for k in kinds) + " | "
                      + " | ".join(f"{m[f'nomoat {k}'] / m['nomoat off']:.2f}" for k in kinds[1:]) + " | "
                      + " | ".join(f"{m[f'llama {k}']:.1f}" for k in kinds) + " | "
                      + " | ".join(f"{m[f'nomoat {k}'] / m[f'llama {k}']:.2f}" for k in kinds[1:]) + " |", flush=True)
            metrics = httpx.get(nomoat.url + "/metrics").text
            counts = {name: sum(float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith(name))
                      for name in ("nomoat_speculative_drafted_tokens_total", "nomoat_speculative_accepted_tokens_total")}
            print(f"\nnomoat drafts (n-gram and draft model together): {counts}")


def section_kv(args: argparse.Namespace, binary: str) -> None:
    meta = BaseModelInfo.from_gguf(embedded_model_path())
    print("\n## KV cache types (nomoat decode tok/s, aggregate over the clients)\n")
    print("| KV | bytes/token | c | decode tok/s | × f16 |")
    print("|---|---|---|---|---|")
    base: dict[int, float] = {}
    servers = {kind: Nomoat(models_toml(parallel=args.slots, n_ctx=4096, threads=args.threads,
                                        extra=f'cache_type_k = "{kind}"\ncache_type_v = "{kind}"\n'))
               for kind in ("f16", "q8_0")}
    with servers["f16"], servers["q8_0"]:
        for c in args.concurrency:
            bodies = [chat(f"Tell me a story about a {w}.", args.tokens, logit_bias=NO_EOG) for w in WORDS[:c]]
            results = interleaved(args.repeat, {k: s.url for k, s in servers.items()},
                                  lambda url, _i, bodies=bodies, c=c: load(url, bodies, c))
            for kind, ts in results.items():
                rate = c * statistics.median(t.decode_tps for t in ts)
                base.setdefault(c, rate)
                print(f"| {kind} | {kv_bytes_per_token(meta, kind, kind)} | {c} | {rate:.1f} | {rate / base[c]:.2f} |",
                      flush=True)


def section_smooth(args: argparse.Namespace, binary: str) -> None:
    print("\n## A running stream while a 4k-token prompt is prefilled (its inter-token gaps)\n")
    print("| server | gap p50 before ms | gap max during prefill ms | gaps > 3× p50 | long prompt TTFT ms |")
    print("|---|---|---|---|---|")
    size = max(args.sizes)
    with Servers(args, binary, n_ctx=size + 1024) as servers:
        for name, url in servers.urls().items():
            pool = concurrent.futures.ThreadPoolExecutor(1)
            stream = pool.submit(stream_chat, url, chat("Tell me a long story about a lighthouse.", args.smooth_tokens,
                                                       logit_bias=NO_EOG))
            time.sleep(1.0)  # the bench may sleep: the stream is well into decoding by then
            sent = time.perf_counter()
            long = stream_chat(url, chat(f"Document:\n{document(size, 1)}\n\nSummarize it.", 4, SYSTEM))
            s = stream.result()
            pool.shutdown()
            ends = [s.started + t for t in s.times[1:]]  # when each gap ended
            during = [g for end, g in zip(ends, s.gaps, strict=True) if sent <= end <= sent + long.ttft + 0.5]
            before = [g for end, g in zip(ends, s.gaps, strict=True) if end < sent]
            p50 = statistics.median(before) if before else 0.0
            worst = max(during, default=0.0)
            print(f"| {name} | {p50 * 1000:.0f} | {worst * 1000:.0f} | {sum(g > 3 * p50 for g in during)} | "
                  f"{long.ttft * 1000:.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", nargs="+", default=["long", "bench", "quant", "spec", "kv", "smooth"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--rounds", type=int, default=2, help="requests per client per run")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="runs per level, interleaved between the servers")
    ap.add_argument("--bench-prompts", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--bench-gen", type=int, default=64)
    ap.add_argument("--bench-reps", type=int, default=3)
    ap.add_argument("--quants", nargs="+", default=["Q4_0", "Q8_0", "Q4_K_M"])
    ap.add_argument("--spec-tokens", type=int, default=160)
    ap.add_argument("--spec-n-max", type=int, default=16)
    ap.add_argument("--spec-draft", default="Q8_0", help="the draft: the model requantised to this type")
    ap.add_argument("--llama-ngram-n", type=int, default=3, help="llama-server's ngram-simple lookup size (its default: 12)")
    ap.add_argument("--llama-ngram-m", type=int, default=0, help="llama-server's ngram-simple draft size (0: --spec-n-max)")
    ap.add_argument("--smooth-tokens", type=int, default=200)
    ap.add_argument("--llama-server", help="a llama-server binary (llama-bench and llama-quantize beside it); "
                    "default: bench/build_llama_server.sh's build")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and counts: checks the script, not the speed")
    args = ap.parse_args()
    if args.smoke:
        args.sizes, args.concurrency, args.rounds, args.tokens, args.repeat = [512], [1, 2], 1, 8, 1
        args.bench_prompts, args.bench_gen, args.bench_reps, args.quants = [128], 8, 1, ["Q8_0"]
        args.spec_tokens, args.smooth_tokens = 48, 48
    binary = args.llama_server or subprocess.run([str(ROOT / "bench" / "build_llama_server.sh")], check=True,
                                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
    print(f"threads={args.threads} slots={args.slots} repeat={args.repeat} (interleaved; medians)", flush=True)
    pp_c1: dict[int, float] = {}
    if "long" in args.sections:
        pp_c1 = section_long(args, binary)
    if "bench" in args.sections:
        section_bench(args, binary, pp_c1)
    for name, section in (("quant", section_quant), ("spec", section_spec), ("kv", section_kv), ("smooth", section_smooth)):
        if name in args.sections:
            section(args, binary)


if __name__ == "__main__":
    main()
