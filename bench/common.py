"""Shared bench helpers: start `nomoat serve` on a free port, stream a chat, time it."""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# One server-process helper for the tests and the benchmarks.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.process import NO_EOS as NO_EOG  # noqa: F401  (the benchmarks' end-of-generation ban)
from support.process import ServerProcess, free_port, wait_healthy  # noqa: F401


class Nomoat:
    """`python -m nomoat serve` with a generated models.toml in a temporary folder, as a context manager."""

    def __init__(self, models_toml: str, *args: str, command: list[str] | None = None) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.server = ServerProcess(models_toml, Path(self.dir.name), "--log-level", "warning", *args,
                                    command=command)
        self.port, self.url = self.server.port, self.server.base_url

    def __enter__(self) -> Nomoat:
        self.server.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        self.dir.cleanup()


@dataclass
class StreamTiming:
    ttft: float
    total: float
    tokens: int
    gaps: list[float]
    times: list[float] = field(default_factory=list)  # each content chunk, from `started`
    started: float = 0.0  # time.perf_counter() at the request
    evaluated: int = 0  # prompt tokens computed (not served from a cache)
    text: str = ""  # the content streamed, for a client that sends the answer back in its next turn

    @property
    def decode_tps(self) -> float:
        """Tokens after the first over the time after the first: the decode rate."""
        return (self.tokens - 1) / (self.total - self.ttft) if self.tokens > 1 and self.total > self.ttft else 0.0


def stream_chat(url: str, body: dict, client: httpx.Client | None = None) -> StreamTiming:
    """POST a streaming chat and time every content chunk (one per token for this model); read the usage
    (and llama-server's `timings`: what it actually evaluated)."""
    if client is None:
        with httpx.Client(timeout=900) as own:
            return stream_chat(url, body, own)
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    times: list[float] = []
    pieces: list[str] = []
    tokens = evaluated = 0
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
                tokens = usage["completion_tokens"]
                cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
                evaluated = usage["prompt_tokens"] - cached
            if chunk.get("timings"):
                evaluated = chunk["timings"].get("prompt_n", evaluated)
            for choice in chunk.get("choices", []):
                if choice["delta"].get("content"):
                    times.append(time.perf_counter() - start)
                    pieces.append(choice["delta"]["content"])
    times = times or [time.perf_counter() - start]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return StreamTiming(times[0], times[-1], tokens, gaps, times, start, evaluated, "".join(pieces))


def models_toml(parallel: int = 4, n_ctx: int = 4096, threads: int = 2, extra: str = "") -> str:
    return (
        f'[[models]]\nname = "smollm2-135m"\nn_ctx = {n_ctx}\nparallel = {parallel}\n'
        f"n_threads = {threads}\n{extra}"
    )
