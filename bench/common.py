"""Shared bench helpers: start `nomoat serve` on a free port, stream a chat, time it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

# SmolLM2's end-of-generation tokens: banned so every run decodes exactly max_tokens.
NO_EOG = {"0": -100, "2": -100, "4": -100}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nomoat:
    """`python -m nomoat serve` with a generated models.toml, as a context manager."""

    def __init__(self, models_toml: str, *args: str) -> None:
        self.dir = tempfile.TemporaryDirectory()
        cfg = Path(self.dir.name) / "models.toml"
        cfg.write_text(models_toml)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(self.dir.name) / "log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nomoat", "serve", "--config", str(cfg), "--port", str(self.port),
             "--log-level", "warning", *args],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def __enter__(self) -> "Nomoat":
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((Path(self.dir.name) / "log").read_text())
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("nomoat did not start")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()
        self.dir.cleanup()


@dataclass
class StreamTiming:
    ttft: float
    total: float
    tokens: int
    gaps: list[float]

    @property
    def decode_tps(self) -> float:
        """Tokens after the first over the time after the first: the decode rate."""
        return (self.tokens - 1) / (self.total - self.ttft) if self.tokens > 1 else 0.0


def stream_chat(url: str, body: dict, client: httpx.Client | None = None) -> StreamTiming:
    """POST a streaming chat and time every content chunk (one per token for this model)."""
    client = client or httpx.Client(timeout=300)
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    times: list[float] = []
    tokens = 0
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                if choice["delta"].get("content"):
                    times.append(time.perf_counter() - start)
    gaps = [b - a for a, b in zip(times, times[1:])]
    return StreamTiming(ttft=times[0], total=times[-1], tokens=tokens, gaps=gaps)


def models_toml(parallel: int = 4, n_ctx: int = 4096, threads: int = 2, extra: str = "") -> str:
    return (
        f'[[models]]\nname = "smollm2-135m"\nn_ctx = {n_ctx}\nparallel = {parallel}\n'
        f"n_threads = {threads}\n{extra}"
    )
