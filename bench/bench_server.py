"""nomoat against llama.cpp's own llama-server under the same streaming chat load.

Run: .venv/bin/python bench/bench_server.py [--concurrency 1 4 8 16] [--tokens 128] [--rounds 2] [--repeat N]
Builds llama-server from the llama.cpp vendored in the installed llama-cpp-python (once, cached in
bench/.cache), serves the same GGUF with the same threads, slots and context on both, and drives
each with C clients that each send --rounds streaming chats of --tokens tokens (end-of-generation
banned), with one adapter set and with three mixed sets (none/A/B, rank-8 random LoRAs).
With --repeat N each level runs N times, interleaved (nomoat, llama-server, nomoat, ...), and the
table gives each metric's median with its min–max, and the ratio of the medians: on a shared
machine that is the only comparison that means something.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from lora_factory import write_lora  # noqa: E402

from bench.common import NO_EOG, Nomoat, free_port, models_toml, stream_chat, wait_healthy  # noqa: E402
from nomoat.config import embedded_model_path  # noqa: E402

TOPICS = ["a lighthouse keeper", "a lost cat", "the first snow", "a clockmaker", "a desert train",
          "a library at night", "a river pilot", "a chess club", "a night market", "an old violin",
          "a mountain rescue", "a bakery", "a comet", "a beekeeper", "a ferry crossing", "a robot gardener"]


class LlamaServer:
    def __init__(self, binary: str, slots: int, n_ctx: int, threads: int, loras: list[Path],
                 extra: list[str] | None = None, model: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [binary, "-m", str(model or embedded_model_path()), "--host", "127.0.0.1", "--port", str(self.port),
                "-np", str(slots), "-c", str(n_ctx * slots), "-t", str(threads), "-tb", str(threads),
                "--no-repack", "--no-webui", "-lv", "0"]
        for lora in loras:
            args += ["--lora", str(lora)]
        if loras:
            args.append("--lora-init-without-apply")
        args += extra or []
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> LlamaServer:
        wait_healthy(self.url, self.proc, 120, describe="llama-server")
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@dataclass
class Result:
    tps: float
    ttft_p50: float
    ttft_p95: float
    itl_p50: float


@dataclass
class Runs:
    """The repeated runs of one server at one level; a metric reads as its median (min–max)."""

    runs: list[Result]

    def median(self, metric: str) -> float:
        return statistics.median(getattr(r, metric) for r in self.runs)

    def show(self, metric: str, scale: float = 1.0, digits: int = 1) -> str:
        values = [getattr(r, metric) * scale for r in self.runs]
        text = f"{statistics.median(values):.{digits}f}"
        if len(values) > 1:
            text += f" ({min(values):.{digits}f}–{max(values):.{digits}f})"
        return text


def run_load(url: str, bodies: list[dict], concurrency: int, rounds: int) -> Result:
    """C clients, each sending `rounds` requests back to back; aggregate completion tokens/s."""
    print(f"  {url} c={concurrency} model={bodies[0]['model']} lora={'lora' in bodies[0]}", file=sys.stderr, flush=True)
    def client(i: int) -> list:
        # A connection per request: llama-server closes kept-alive connections between requests, and
        # reusing one then fails with "Server disconnected without sending a response".
        out = []
        for r in range(rounds):
            with httpx.Client(timeout=600) as c:
                out.append(stream_chat(url, bodies[(i + r * concurrency) % len(bodies)], c))
        return out

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        timings = [t for ts in pool.map(client, range(concurrency)) for t in ts]
    wall = time.perf_counter() - start
    ttfts = sorted(t.ttft for t in timings)
    gaps = [g for t in timings for g in t.gaps]
    return Result(
        tps=sum(t.tokens for t in timings) / wall,
        ttft_p50=statistics.median(ttfts),
        ttft_p95=ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))],
        itl_p50=statistics.median(gaps) if gaps else 0.0,
    )


def bodies_for(server: str, mixed: bool, tokens: int) -> list[dict]:
    """Request bodies; with `mixed`, requests cycle through base, A and B."""
    out = []
    for i, topic in enumerate(TOPICS):
        body = {"messages": [{"role": "user", "content": f"Tell me a story about {topic}."}],
                "max_tokens": tokens, "temperature": 0, "logit_bias": NO_EOG}
        which = i % 3 if mixed else 0
        if server == "nomoat":
            body["model"] = ["smollm2-135m", "a", "b"][which]
        else:
            body["model"] = "smollm2-135m"
        if server != "nomoat" and mixed:
            body["lora"] = [{"id": 0, "scale": 1.0 if which == 1 else 0.0},
                            {"id": 1, "scale": 1.0 if which == 2 else 0.0}]
        out.append(body)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=1, help="runs per level, interleaved between the servers")
    args = ap.parse_args()
    binary = subprocess.run([str(ROOT / "bench" / "build_llama_server.sh")], check=True,
                            capture_output=True, text=True).stdout.strip().splitlines()[-1]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        loras = [write_lora(Path(tmp) / f"{n}.gguf", i + 1, rank=8, std=0.02) for i, n in enumerate("ab")]
        extra = "".join(f'[[adapters]]\nname = "{n}"\npath = "{p}"\n' for n, p in zip("ab", loras, strict=False))
        for mixed in (False, True):
            for c in args.concurrency:
                rows.append((("3 mixed sets" if mixed else "one set"), c,
                             *measure_level(args, binary, loras, extra, mixed, c)))
    print(f"slots={args.slots} threads={args.threads} n_ctx/slot={args.n_ctx} tokens={args.tokens} "
          f"rounds={args.rounds} repeat={args.repeat}" + (" (interleaved; median (min–max))" if args.repeat > 1 else ""))
    print("| load | c | nomoat tok/s | llama-server tok/s | ratio | nomoat TTFT p50/p95 | llama-server TTFT p50/p95 "
          "| ITL p50 nomoat / llama |")
    print("|---|---|---|---|---|---|---|---|")
    for load, c, n, llama in rows:
        ttft = lambda r: f"{r.show('ttft_p50', 1000, 0)}/{r.show('ttft_p95', 1000, 0)} ms"  # noqa: E731
        if llama is None:
            print(f"| {load} | {c} | {n.show('tps')} | failed | — | {ttft(n)} | — | {n.show('itl_p50', 1000)} / — ms |")
            continue
        print(f"| {load} | {c} | {n.show('tps')} | {llama.show('tps')} | {n.median('tps') / llama.median('tps'):.2f} | "
              f"{ttft(n)} | {ttft(llama)} | {n.show('itl_p50', 1000)} / {llama.show('itl_p50', 1000)} ms |")


def measure_level(args: argparse.Namespace, binary: str, loras: list[Path], extra: str, mixed: bool,
                  c: int) -> tuple[Runs, Runs | None]:
    """--repeat runs of each server at concurrency c, alternating; a fresh server for every run,
    so a llama-server that crashes takes only its own run down (the level is then "failed")."""
    nomoat: list[Result] = []
    llama: list[Result] = []
    failed = False
    for _ in range(args.repeat):
        with Nomoat(models_toml(parallel=args.slots, n_ctx=args.n_ctx, threads=args.threads, extra=extra)) as s:
            run_load(s.url, bodies_for("nomoat", mixed, 8), 3, 1)  # warm-up: every adapter set once
            nomoat.append(run_load(s.url, bodies_for("nomoat", mixed, args.tokens), c, args.rounds))
        with LlamaServer(binary, args.slots, args.n_ctx, args.threads, loras) as s:
            try:
                run_load(s.url, bodies_for("llama", mixed, 8), 3, 1)
                llama.append(run_load(s.url, bodies_for("llama", mixed, args.tokens), c, args.rounds))
            except httpx.HTTPError as exc:
                failed = True
                print(f"llama-server failed at c={c}: {exc!r} (exit code {s.proc.poll()})", file=sys.stderr)
    return Runs(nomoat), (Runs(llama) if llama and not failed else None)


if __name__ == "__main__":
    main()
