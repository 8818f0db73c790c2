"""Soak: many mixed requests from several clients, then the server's fds, threads, RSS and gauges against
where they started.

    python bench/soak.py --requests 900 --clients 8

One `nomoat serve` (the embedded model, two runtime-loadable adapters, keys for two users and an admin)
gets `--requests` requests from `--clients` threads, drawn round-robin from a mix: chat, streamed chat
(some cut off mid-stream by the client), completions, embeddings, Responses (stored, continued with
`previous_response_id`, read back, deleted), Anthropic messages (whole and streamed), a grammar-constrained
chat, bad bodies (NaN, deep nesting, an unknown model) and adapter load/unload by the admin. A warm-up round
as long as the measured one runs first, so that caches and thread pools, which grow to their size once under
load, are counted in the baseline (after a 96-request warm-up one more pool thread appeared in the measured
round; after 900 none did). It prints the figures before and
after, and exits 1 when an answer was a 5xx or a count did not come back (fds, threads, gauges exactly;
RSS within `--rss-slack-mib`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from lora_factory import write_lora
from support.process import ServerProcess

USER_A, USER_B, ADMIN = "soak-user-a", "soak-user-b", "soak-admin"
GAUGES = ("nomoat_active_sequences", "nomoat_queue_depth", "nomoat_requests_in_flight", "nomoat_models_loaded",
          "vllm:num_requests_running", "vllm:num_requests_waiting")
BUSY = ("nomoat_active_sequences", "nomoat_queue_depth", "vllm:num_requests_running", "vllm:num_requests_waiting")


def proc_figures(pid: int) -> dict[str, float]:
    """The server's open fds, threads and RSS (MiB), from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    rss_kib = int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    return {"fds": len(list(Path(f"/proc/{pid}/fd").iterdir())), "threads": threads, "rss_mib": rss_kib / 1024}


def thread_names(pid: int) -> Counter[str]:
    """The server's threads by name (pools grow to their size lazily: which one grew tells a leak from a pool)."""
    return Counter(re.sub(r"\d+$", "N", p.read_text().strip()) for p in Path(f"/proc/{pid}/task").glob("*/comm"))


def gauges(client: httpx.Client) -> dict[str, float]:
    """Every gauge in GAUGES, summed over its labels (those the server exports)."""
    text = client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in GAUGES:
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


class Mix:
    """The request kinds, each a function of (client, n) that returns the answer's status."""

    def __init__(self, adapter_paths: list[Path]) -> None:
        self.adapters = adapter_paths
        self.lock = threading.Lock()
        self.stored: list[str] = []

    def kinds(self) -> list[Callable[[httpx.Client, int], int]]:
        return [self.chat, self.stream, self.stream_cut, self.completion, self.embeddings, self.response,
                self.response_chain, self.messages, self.messages_stream, self.grammar, self.bad, self.adapter]

    @staticmethod
    def _user(n: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {USER_A if n % 2 else USER_B}"}

    def chat(self, c: httpx.Client, n: int) -> int:
        body = {"model": "smollm2-135m", "max_tokens": 8, "messages": [{"role": "user", "content": f"Say {n}"}]}
        return c.post("/v1/chat/completions", json=body, headers=self._user(n)).status_code

    def stream(self, c: httpx.Client, n: int) -> int:
        body = {"model": "smollm2-135m", "max_tokens": 8, "stream": True,
                "messages": [{"role": "user", "content": f"Count to {n}"}]}
        with c.stream("POST", "/v1/chat/completions", json=body, headers=self._user(n)) as r:
            for _ in r.iter_lines():
                pass
            return r.status_code

    def stream_cut(self, c: httpx.Client, n: int) -> int:
        body = {"model": "smollm2-135m", "max_tokens": 64, "stream": True,
                "messages": [{"role": "user", "content": "Tell a long story."}]}
        with c.stream("POST", "/v1/chat/completions", json=body, headers=self._user(n)) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i == 3:
                    break  # the client goes away mid-stream
            return r.status_code

    def completion(self, c: httpx.Client, n: int) -> int:
        body = {"model": "smollm2-135m", "prompt": f"{n} plus one is", "max_tokens": 6}
        return c.post("/v1/completions", json=body, headers=self._user(n)).status_code

    def embeddings(self, c: httpx.Client, n: int) -> int:
        body = {"model": "smollm2-135m", "input": [f"text {n}", "another"]}
        return c.post("/v1/embeddings", json=body, headers=self._user(n)).status_code

    def response(self, c: httpx.Client, n: int) -> int:
        body = {"model": "smollm2-135m", "input": f"Hello {n}", "max_output_tokens": 8, "store": True}
        r = c.post("/v1/responses", json=body, headers=self._user(n))
        if r.status_code == 200:
            with self.lock:
                self.stored.append(r.json()["id"])
        return r.status_code

    def response_chain(self, c: httpx.Client, n: int) -> int:
        """Continue, read back and delete a stored response (the same key made it: n's parity)."""
        body = {"model": "smollm2-135m", "input": "And then?", "max_output_tokens": 8, "store": True}
        first = c.post("/v1/responses", json={**body, "input": "Start"}, headers=self._user(n))
        if first.status_code != 200:
            return first.status_code
        rid = first.json()["id"]
        nxt = c.post("/v1/responses", json={**body, "previous_response_id": rid}, headers=self._user(n))
        if nxt.status_code != 200:
            return nxt.status_code
        for path in (f"/v1/responses/{rid}", f"/v1/responses/{nxt.json()['id']}"):
            got = c.get(path, headers=self._user(n)).status_code
            if got != 200:
                return got
        return c.delete(f"/v1/responses/{nxt.json()['id']}", headers=self._user(n)).status_code

    def messages(self, c: httpx.Client, n: int) -> int:
        body = {"model": "smollm2-135m", "max_tokens": 8, "messages": [{"role": "user", "content": f"Hi {n}"}]}
        headers = {"x-api-key": USER_A, "anthropic-version": "2023-06-01"}
        return c.post("/v1/messages", json=body, headers=headers).status_code

    def messages_stream(self, c: httpx.Client, n: int) -> int:
        body = {"model": "smollm2-135m", "max_tokens": 8, "stream": True,
                "messages": [{"role": "user", "content": f"Hi {n}"}]}
        headers = {"x-api-key": USER_B, "anthropic-version": "2023-06-01"}
        with c.stream("POST", "/v1/messages", json=body, headers=headers) as r:
            for _ in r.iter_lines():
                pass
            return r.status_code

    def grammar(self, c: httpx.Client, n: int) -> int:
        body = {"model": "smollm2-135m", "max_tokens": 12, "messages": [{"role": "user", "content": "A colour?"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": {
                    "type": "object", "properties": {"colour": {"type": "string", "maxLength": 8}},
                    "required": ["colour"], "additionalProperties": False}}}}
        return c.post("/v1/chat/completions", json=body, headers=self._user(n)).status_code

    def bad(self, c: httpx.Client, n: int) -> int:
        """Bodies that must be refused with a 4xx: NaN, deep nesting, an unknown model, broken JSON."""
        headers = {**self._user(n), "Content-Type": "application/json"}
        bodies = [
            '{"model": "smollm2-135m", "temperature": NaN, "messages": [{"role": "user", "content": "x"}]}',
            '{"model": "smollm2-135m", "messages": [{"role": "user", "content": "x"}], "metadata": '
            + "[" * 600 + "]" * 600 + "}",
            '{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}',
            '{"model": "smollm2-135m", "messages": [',
        ]
        status = c.post("/v1/chat/completions", content=bodies[n % len(bodies)], headers=headers).status_code
        return status if status >= 500 else 200 if 400 <= status < 500 else 599  # a 2xx here is wrong too

    def adapter(self, c: httpx.Client, n: int) -> int:
        """Load an adapter under a fresh name, use it once, unload it (admin key)."""
        name = f"soak-{n}"
        admin = {"Authorization": f"Bearer {ADMIN}"}
        r = c.post("/v1/adapters", json={"name": name, "path": str(self.adapters[n % len(self.adapters)])},
                   headers=admin)
        if r.status_code != 201:
            return r.status_code
        body = {"model": name, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
        used = c.post("/v1/chat/completions", json=body, headers=admin).status_code
        gone = c.delete(f"/v1/adapters/{name}", headers=admin).status_code
        return used if used != 200 else gone


def run_round(url: str, mix: Mix, requests: int, clients: int, counter: itertools.count) -> Counter[int]:
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    kinds = mix.kinds()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=300) as c:
            while True:
                n = next(counter)
                if n >= requests:
                    return
                kind = kinds[n % len(kinds)]
                try:
                    status = kind(c, n)
                except httpx.HTTPError as exc:
                    print(f"  {kind.__name__} #{n}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    status = 0
                if status >= 500 or status == 0:
                    print(f"  {kind.__name__} #{n}: {status}", file=sys.stderr)
                with lock:
                    statuses[status] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def settle(server: ServerProcess, client: httpx.Client, timeout: float = 60.0) -> dict[str, float]:
    """The figures once nothing runs or waits (requests the clients cut off finish inside the server)."""
    deadline = time.monotonic() + timeout
    while True:
        g = gauges(client)
        if all(g.get(name, 0) == 0 for name in BUSY) or time.monotonic() > deadline:
            return {**proc_figures(server.proc.pid), **g}
        time.sleep(0.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=900)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=None,
                    help="requests of the warm-up round, not counted (default: as many as --requests)")
    ap.add_argument("--rss-slack-mib", type=float, default=32.0)
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    args = ap.parse_args()
    warmup = args.requests if args.warmup is None else args.warmup

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        adapters = work / "adapters"
        adapters.mkdir()
        paths = [write_lora(adapters / f"a{i}.gguf", seed=i) for i in range(2)]
        (work / "keys").write_text(f"{USER_A}\n{USER_B}\n")
        config = ('default_model = "smollm2-135m"\n[[models]]\nname = "smollm2-135m"\n'
                  f'path = "embedded:smollm2-135m"\nparallel = 4\nload = "startup"\nn_threads = {args.threads}\n')
        server = ServerProcess(config, work, "--log-level", "warning", "--adapter-dir", str(adapters),
                               "--api-key-file", str(work / "keys"), env={"NOMOAT_ADMIN_KEY": ADMIN})
        try:
            server.wait_ready()
            mix = Mix(paths)
            with httpx.Client(base_url=server.base_url, timeout=60) as c:
                warm = run_round(server.base_url, mix, warmup, args.clients, itertools.count())
                before = settle(server, c)
                names_before = thread_names(server.proc.pid)
                start = time.perf_counter()
                statuses = run_round(server.base_url, mix, args.requests, args.clients, itertools.count())
                elapsed = time.perf_counter() - start
                after = settle(server, c)
                names_after = thread_names(server.proc.pid)
        finally:
            server.stop()
    print(f"warm-up: {dict(warm)}")
    print(f"{args.requests} requests from {args.clients} clients in {elapsed:.1f} s: statuses {dict(statuses)}")
    print(json.dumps({"before": before, "after": after}, indent=1))
    failed = [s for s in statuses if s >= 500 or s == 0 or s == 599]
    drift = [k for k in before if k != "rss_mib" and after.get(k) != before[k]]
    rss_growth = after["rss_mib"] - before["rss_mib"]
    if failed:
        print(f"FAIL: answers {failed}")
    if drift:
        print(f"FAIL: did not come back: {drift}")
        print(f"threads before {dict(names_before)}, after {dict(names_after)}")
    if rss_growth > args.rss_slack_mib:
        print(f"FAIL: RSS grew {rss_growth:.1f} MiB (slack {args.rss_slack_mib})")
    ok = not failed and not drift and rss_growth <= args.rss_slack_mib
    print("OK" if ok else "soak failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
