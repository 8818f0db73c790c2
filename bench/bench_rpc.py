"""What splitting a model across `nomoat worker`s costs: decode tok/s and time to first token, split against local.

Run: .venv/bin/python bench/bench_rpc.py [--workers 2] [--repeat 5] [--max-tokens 64] [--threads 1]
Needs llama-cpp-python built with RPC (CMAKE_ARGS=-DGGML_RPC=on). Starts the workers on 127.0.0.1 and one
server holding the embedded model twice: `local`, and `split` with every layer on the workers (served from
its own child process, its requests forwarded there). Requests alternate between the two, one at a time,
greedy, end-of-generation banned, so both decode the same number of tokens. On one machine the network is
loopback: the figures show the RPC round trips' cost, not a LAN's; across machines add the link's latency
per token per worker.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import NO_EOG, Nomoat, free_port, stream_chat
from nomoat.rpc.ggml import supports_rpc


def start_worker(port: int, threads: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nomoat", "worker", "--port", str(port), "--threads",
                                 str(threads)], stdout=out, stderr=subprocess.STDOUT)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="threads per worker and for the local model")
    args = ap.parse_args()
    if not supports_rpc():
        sys.exit("llama-cpp-python was built without RPC: CMAKE_ARGS=-DGGML_RPC=on (see README)")
    logs = Path(tempfile.mkdtemp(prefix="bench-rpc-"))
    ports = [free_port() for _ in range(args.workers)]
    workers = [start_worker(p, args.threads, logs / f"worker-{p}.log") for p in ports]
    endpoints = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    model = f'path = "embedded:smollm2-135m"\nn_ctx = 2048\nparallel = 1\nn_threads = {args.threads}\nload = "startup"\n'
    toml = f'[[models]]\nname = "local"\n{model}\n[[models]]\nname = "split"\n{model}rpc = [{endpoints}]\n'
    body = {"max_tokens": args.max_tokens, "temperature": 0, "logit_bias": NO_EOG,
            "messages": [{"role": "user", "content": "Tell me about the sea."}]}
    try:
        with Nomoat(toml) as server:
            for name in ("local", "split"):  # warm-up: first graph reservations, page cache
                stream_chat(server.url, {**body, "model": name, "max_tokens": 4})
            runs: dict[str, list] = {"local": [], "split": []}
            for _ in range(args.repeat):
                for name in runs:
                    runs[name].append(stream_chat(server.url, {**body, "model": name}))
    finally:
        for proc in workers:
            proc.kill()
            proc.wait()
    print(f"SmolLM2-135M Q4_1, {args.workers} workers on 127.0.0.1, {args.threads} thread(s) each and locally, "
          f"{args.max_tokens} tokens, median of {args.repeat} (interleaved)")
    print("| model | decode tok/s | TTFT ms |")
    print("|---|---|---|")
    for name, timings in runs.items():
        tps = statistics.median(t.decode_tps for t in timings)
        ttft = statistics.median(t.ttft for t in timings) * 1000
        print(f"| {name} | {tps:.1f} | {ttft:.0f} |")


if __name__ == "__main__":
    main()
