"""Issue #33's benchmark: returning conversations on more conversations than slots, nomoat's prompt cache against
llama-server's `--cache-ram`, across an unload and a restart, and what a save costs the stream that causes it.

Run: .venv/bin/python bench/bench_prompt_cache.py [--conversations 6] [--context-tokens 1500] [--rounds 3]
     [--tokens 16] [--parallel 2] [--llama-server PATH | --no-llama] [--save-runs 6]

Six conversations, each with its own ~1.5k-token context (a system message of notes), on `parallel = 2`, are
visited round-robin for three rounds, one request at a time, each asking a new question and sending the earlier
answers back, 16-token answers: the TTFT p50 of round 1 (cold) against rounds 2-3. The same on llama-server from
the same llama.cpp (bench/build_llama_server.sh) with `--cache-ram 0` and with `--cache-ram 8192` (its default).
Then nomoat unloads the model (a request with keep_alive 0), loads it again and runs round 4; then it restarts
(same state dir) and runs round 5; llama-server restarts and runs round 4. Printed beside: the prompt tokens each
request evaluated (the rest came from a cache), nomoat's RSS growth, its prompt-cache metrics and the bytes in
<state_dir>/prompt-cache.

The save cost: on three nomoat servers (prompt cache off; RAM only; a 1 MiB RAM tier so every state goes to
disk) the slots are filled, then `--save-runs` new conversations each take a slot from one that never returns
(its state saved) and stream `--save-tokens` tokens; requests interleave the servers; medians of TTFT and total
against the server with the cache off (goal: at most 5 % slower).
Goals (#33): a returning conversation's TTFT at most 15 % of its cold TTFT, at most llama-server --cache-ram's,
and the same after the unload and the restart.
"""

from __future__ import annotations

import argparse
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
from bench.common import ServerProcess, StreamTiming, models_toml, stream_chat  # noqa: E402
from nomoat.models_toml import ModelConfig  # noqa: E402

MODEL = "smollm2-135m"
# SmolLM2's tokenizer spends about 1.1 tokens on each of these words with its space (1,282 for 1,153 words).
TOKENS_PER_WORD = 1.1
WORDS = ("river", "stone", "lantern", "harbor", "winter", "copper", "garden", "signal", "market", "engine", "window",
         "basket", "ladder", "thunder", "meadow", "pepper", "castle", "velvet", "anchor", "orchard", "mirror", "canvas",
         "falcon", "silver", "candle", "valley", "rocket", "marble", "forest", "bridge", "violet", "timber", "saddle",
         "comet", "island", "pillow", "harvest", "tunnel", "feather", "compass", "quartz", "blanket", "cellar")
HAS_PROMPT_CACHE = "prompt_cache_ram" in ModelConfig.model_fields


class Conversation:
    """One client's chat: its own notes as the system message, then each question and the answer it got."""

    def __init__(self, index: int, context_tokens: int) -> None:
        rng = random.Random(index)
        words = [rng.choice(WORDS) for _ in range(int(context_tokens / TOKENS_PER_WORD))]
        notes = ". ".join(" ".join(words[i:i + 12]) for i in range(0, len(words), 12))
        self.index = index
        self.messages: list[dict[str, str]] = [
            {"role": "system", "content": f"Conversation {index}. Answer from these notes only.\n{notes}."}]

    def ask(self, url: str, turn: int, tokens: int, **extra: object) -> StreamTiming:
        self.messages.append({"role": "user", "content": f"Question {turn}: which words come up most in note {turn}?"})
        body = {"model": MODEL, "messages": self.messages, "max_tokens": tokens, "temperature": 0, **extra}
        with httpx.Client(timeout=600) as client:  # a connection per request, as bench_server does for llama-server
            timing = stream_chat(url, body, client)
        self.messages.append({"role": "assistant", "content": timing.text})
        return timing


def one_round(url: str, conversations: list[Conversation], turn: int, tokens: int) -> list[StreamTiming]:
    return [c.ask(url, turn, tokens) for c in conversations]


def load(url: str) -> None:
    """A short request (no cacheable prefix) so the next measured request does not pay the model's load."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    httpx.post(url + "/v1/chat/completions", json=body, timeout=600).raise_for_status()


def unload(url: str) -> None:
    """Ollama's way: a request with keep_alive 0, then wait for the model to be unloaded."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "bye"}], "max_tokens": 1, "keep_alive": 0}
    httpx.post(url + "/v1/chat/completions", json=body, timeout=600).raise_for_status()
    deadline = time.monotonic() + 120
    while next(c["status"] for c in httpx.get(url + "/models", timeout=30).json()["data"] if c["id"] == MODEL) \
            != "unloaded":
        if time.monotonic() > deadline:
            raise RuntimeError("the model did not unload within 120 s of a keep_alive 0 request")
        time.sleep(0.05)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cache_metrics(url: str) -> list[str]:
    text = httpx.get(url + "/metrics", timeout=30).text
    return [line for line in text.splitlines() if "prompt_cache" in line and not line.startswith("#")]


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def toml(args: argparse.Namespace, ram: str | None = None) -> str:
    extra = f'prompt_cache_ram = "{ram}"\n' if ram is not None and HAS_PROMPT_CACHE else ""
    return models_toml(parallel=args.parallel, n_ctx=args.n_ctx, threads=args.threads, extra=extra)


def nomoat_run(args: argparse.Namespace) -> dict[str, list[StreamTiming]]:
    rows: dict[str, list[StreamTiming]] = {}
    conversations = [Conversation(i, args.context_tokens) for i in range(args.conversations)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = ServerProcess(toml(args), work, "--log-level", "warning").wait_ready()
        try:
            load(server.base_url)
            before = rss(server.proc.pid)
            for turn in range(1, args.rounds + 1):
                rows[f"round {turn}"] = one_round(server.base_url, conversations, turn, args.tokens)
            grown = rss(server.proc.pid) - before
            print(f"nomoat RSS growth over {args.rounds} rounds: {grown / 2**20:.0f} MiB", file=sys.stderr)
            for line in cache_metrics(server.base_url):
                print(f"  {line}", file=sys.stderr)
            unload(server.base_url)
            load(server.base_url)
            rows["after unload"] = one_round(server.base_url, conversations, args.rounds + 1, args.tokens)
        finally:
            server.stop()
        disk = folder_bytes(work / "state" / "prompt-cache")
        print(f"nomoat prompt-cache folder after the stop: {disk / 2**20:.0f} MiB", file=sys.stderr)
        server = ServerProcess(toml(args), work, "--log-level", "warning").wait_ready()
        try:
            load(server.base_url)
            rows["after restart"] = one_round(server.base_url, conversations, args.rounds + 2, args.tokens)
            for line in cache_metrics(server.base_url):
                print(f"  {line}", file=sys.stderr)
        finally:
            server.stop()
    return rows


def llama_run(args: argparse.Namespace, binary: str, cache_ram_mib: int) -> dict[str, list[StreamTiming]]:
    rows: dict[str, list[StreamTiming]] = {}
    conversations = [Conversation(i, args.context_tokens) for i in range(args.conversations)]
    extra = ["--cache-ram", str(cache_ram_mib)]
    with LlamaServer(binary, args.parallel, args.n_ctx, args.threads, [], extra) as server:
        for turn in range(1, args.rounds + 1):
            rows[f"round {turn}"] = one_round(server.url, conversations, turn, args.tokens)
    with LlamaServer(binary, args.parallel, args.n_ctx, args.threads, [], extra) as server:
        rows["after restart"] = one_round(server.url, conversations, args.rounds + 1, args.tokens)
    return rows


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms" if values else "—"


def report(name: str, rows: dict[str, list[StreamTiming]]) -> None:
    """Round 1 (cold), the later rounds together, then each row after an unload or a restart."""
    later = [t for key, ts in rows.items() if key.startswith("round ") and key != "round 1" for t in ts]
    shown = [("round 1 (cold)", rows["round 1"]), ("later rounds", later),
             *((key, ts) for key, ts in rows.items() if not key.startswith("round "))]
    cold = statistics.median(t.ttft for t in rows["round 1"])
    for label, ts in (row for row in shown if row[1]):
        ttft = statistics.median(t.ttft for t in ts)
        print(f"| {name} | {label} | {ttft * 1000:.0f} ms | {ttft / cold:.2f} | "
              f"{statistics.median(t.evaluated for t in ts):.0f} |", flush=True)


def save_cost(args: argparse.Namespace) -> None:
    """Streams that each take a slot from a conversation that never returns, on three configurations at once."""
    configs: dict[str, tuple[str | None, dict[str, str]]] = {
        "cache off": ("0", {"NOMOAT_PROMPT_CACHE_DISK": "0"}),
        "RAM tier": (None, {"NOMOAT_PROMPT_CACHE_DISK": "0"}),
        "to disk (1 MiB RAM)": ("1MiB", {}),
    }
    with tempfile.TemporaryDirectory() as tmp:
        servers = {}
        for i, (name, (ram, env)) in enumerate(configs.items()):
            (Path(tmp) / str(i)).mkdir()
            servers[name] = ServerProcess(toml(args, ram), Path(tmp) / str(i), "--log-level", "warning", env=env)
        try:
            for s in servers.values():
                s.wait_ready()
                load(s.base_url)
            timings: dict[str, list[StreamTiming]] = {name: [] for name in servers}
            fresh: Callable[[int], Conversation] = lambda i: Conversation(1000 + i, args.context_tokens)  # noqa: E731
            for i in range(args.parallel):  # fill the slots with conversations that will be pushed out
                for s in servers.values():
                    fresh(i).ask(s.base_url, 1, args.tokens)
            order = list(servers)
            for i in range(args.save_runs):
                for name in order[i % len(order):] + order[:i % len(order)]:
                    timings[name].append(fresh(args.parallel + i).ask(servers[name].base_url, 1, args.save_tokens))
            for name, s in servers.items():
                print(f"{name}: {' '.join(cache_metrics(s.base_url)) or 'no prompt-cache metrics'}", file=sys.stderr)
        finally:
            for s in servers.values():
                s.stop()
    base_ttft = statistics.median(t.ttft for t in timings["cache off"])
    base_total = statistics.median(t.total for t in timings["cache off"])
    print(f"\nSave cost: {args.save_runs} new conversations, each evicting one that never returns "
          f"({args.save_tokens}-token answers), medians; interleaved")
    print("| nomoat | TTFT | total | total vs cache off |")
    print("|---|---|---|---|")
    for name, ts in timings.items():
        total = statistics.median(t.total for t in ts)
        print(f"| {name} | {ms([t.ttft for t in ts])} | {total * 1000:.0f} ms | {(total / base_total - 1) * 100:+.1f} % "
              f"(TTFT {(statistics.median(t.ttft for t in ts) / base_ttft - 1) * 100:+.1f} %) |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int, default=6)
    ap.add_argument("--context-tokens", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=4096, help="context per slot")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-runs", type=int, default=6)
    ap.add_argument("--save-tokens", type=int, default=64)
    ap.add_argument("--llama-server", help="an existing llama-server binary (default: build_llama_server.sh's)")
    ap.add_argument("--no-llama", action="store_true", help="nomoat only")
    args = ap.parse_args()
    if not HAS_PROMPT_CACHE:
        print("this nomoat has no prompt cache (no prompt_cache_ram in models.toml): its rows show the slots alone",
              file=sys.stderr)
    # Each table's rows are printed as soon as their run ends: a run cut short keeps what it measured.
    nomoat = nomoat_run(args)
    print(f"\n{args.conversations} conversations of ~{args.context_tokens} context tokens, parallel={args.parallel}, "
          f"{args.rounds} rounds round-robin, one request at a time, {args.tokens}-token answers, "
          f"{args.threads} threads; prompt tokens evaluated in round 1, p50: "
          f"{statistics.median(t.evaluated for t in nomoat['round 1']):.0f}")
    print("| server | requests | TTFT p50 | vs its round 1 | prompt tokens evaluated p50 |")
    print("|---|---|---|---|---|")
    report("nomoat", nomoat)
    if not args.no_llama:
        binary = args.llama_server or subprocess.run(
            [str(ROOT / "bench" / "build_llama_server.sh")], check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
        for cache_ram_mib in (0, 8192):
            report(f"llama-server --cache-ram {cache_ram_mib}", llama_run(args, binary, cache_ram_mib))
    if args.save_runs > 0:  # 0: the rounds alone
        save_cost(args)


if __name__ == "__main__":
    main()
