"""Two nomoat builds (say, before and after a refactor) under the same streaming chat load.

Run: .venv/bin/python bench/bench_compare.py --a "/old/.venv/bin/python -m server" \
         --b ".venv/bin/python -m nomoat" [--repeat 3] [--tokens 128] [--rounds 2]
Each command is started as `CMD serve --config CFG --port P --log-level warning` with the same
models.toml (the embedded SmolLM2-135M, --slots parallel, --n-ctx, --threads, and two rank-8 random
LoRAs "a" and "b"). Per load level (one adapter set at c=1, 4, 8; three mixed sets none/A/B at c=8)
the two run interleaved, a, b, a, b, ... --repeat times, a fresh server per run, driven by
bench_server.py's load (C clients, --rounds streaming chats of --tokens tokens each, end-of-generation
banned). The table gives median (min–max) tok/s and TTFT p50 of each, and the ratio b/a of the medians.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from lora_factory import write_lora  # noqa: E402

from bench.bench_server import Result, Runs, bodies_for, run_load  # noqa: E402
from bench.common import Nomoat, models_toml  # noqa: E402


def absolute(argv: list[str]) -> list[str]:
    """The command with a relative interpreter path made absolute: servers start in their own workdir."""
    if argv and "/" in argv[0] and not argv[0].startswith("/"):
        return [str(Path(argv[0]).absolute()), *argv[1:]]  # not resolve(): a venv's python is a symlink
    return argv


LEVELS: list[tuple[bool, int]] = [(False, 1), (False, 4), (False, 8), (True, 8)]


@dataclass
class Level:
    load: str
    c: int
    a: Runs
    b: Runs


def one_run(command: str, config_text: str, mixed: bool, c: int, tokens: int, rounds: int) -> Result:
    """A fresh server, a short warm-up (every adapter set once), then the measured load."""
    with Nomoat(config_text, command=absolute(shlex.split(command))) as s:
        run_load(s.url, bodies_for("nomoat", mixed, 8), 3, 1)
        return run_load(s.url, bodies_for("nomoat", mixed, tokens), c, rounds)


def measure_level(args: argparse.Namespace, config_text: str, mixed: bool, c: int) -> Level:
    """--repeat runs of each command at concurrency c, alternating a, b, a, b, ..."""
    a: list[Result] = []
    b: list[Result] = []
    for _ in range(args.repeat):
        a.append(one_run(args.a, config_text, mixed, c, args.tokens, args.rounds))
        b.append(one_run(args.b, config_text, mixed, c, args.tokens, args.rounds))
    return Level("3 mixed sets" if mixed else "one set", c, Runs(a), Runs(b))


def print_header(args: argparse.Namespace) -> None:
    print(f"a = {args.a}\nb = {args.b}")
    print(f"slots={args.slots} threads={args.threads} n_ctx/slot={args.n_ctx} tokens={args.tokens} "
          f"rounds={args.rounds} repeat={args.repeat} (interleaved; median (min–max))")
    print("| load | c | a tok/s | b tok/s | b/a tok/s | a TTFT p50 ms | b TTFT p50 ms | b/a TTFT p50 |")
    print("|---|---|---|---|---|---|---|---|", flush=True)


def print_row(lv: Level) -> None:
    """One level's row, printed as soon as it is measured, so a run cut short keeps what it has."""
    print(f"| {lv.load} | {lv.c} | {lv.a.show('tps')} | {lv.b.show('tps')} | "
          f"{lv.b.median('tps') / lv.a.median('tps'):.2f} | {lv.a.show('ttft_p50', 1000, 0)} | "
          f"{lv.b.show('ttft_p50', 1000, 0)} | {lv.b.median('ttft_p50') / lv.a.median('ttft_p50'):.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="command that starts server a, e.g. the build before a change")
    ap.add_argument("--b", default=f"{sys.executable} -m nomoat", help="command that starts server b (default: this checkout)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3, help="runs per level and server, interleaved")
    args = ap.parse_args()
    print_header(args)
    with tempfile.TemporaryDirectory() as tmp:
        loras = [write_lora(Path(tmp) / f"{n}.gguf", i + 1, rank=8, std=0.02) for i, n in enumerate("ab")]
        extra = "".join(f'[[adapters]]\nname = "{n}"\npath = "{p}"\n' for n, p in zip("ab", loras, strict=True))
        config_text = models_toml(parallel=args.slots, n_ctx=args.n_ctx, threads=args.threads, extra=extra)
        for mixed, c in LEVELS:
            print_row(measure_level(args, config_text, mixed, c))


if __name__ == "__main__":
    main()
