"""Real `nomoat serve` processes on free ports, for the end-to-end tests and the benchmarks alike."""

from __future__ import annotations

import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx

from .forkserver import ForkedProcess, ForkServer

# SmolLM2's end-of-generation tokens (<|endoftext|>, <|im_end|>, <reponame>): banned, a generation runs
# to max_tokens, so lengths, counts, long streams and timings do not depend on what the model says.
NO_EOS = {"0": -100, "2": -100, "4": -100}
# llama.cpp threads per test server and in-process model: this worker's share of the cores. The suite runs
# on pytest-xdist workers (pyproject.toml); two workers that each ran two threads on a 2-core machine would
# stall each other at every barrier of every decode (docs/architecture.md, Tests).
THREADS = max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


def _port_slice() -> Iterator[int]:
    """This process's own ports, below the kernel's ephemeral range: bind(0) would hand out ports that
    another pytest-xdist worker may also be handed before either server has bound its own, and that the
    kernel also gives outgoing connections. Worker N cycles through the Nth slice from a random start."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = max(1, (low - 10000) // max(workers, 1))
    first = 10000 + worker * size
    start = random.randrange(size)
    for i in itertools.count():
        yield first + (start + i) % size


_ports = _port_slice()


def free_port() -> int:
    """A port no listener holds now, and that no other worker of this test run will choose."""
    for port in itertools.islice(_ports, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in this worker's slice")


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float, describe: str = "server") -> None:
    """Poll GET /health until it answers 200; raise if the process exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{describe} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{describe} not ready after {timeout:g}s")


class ServerProcess:
    """A `python -m nomoat serve` child on 127.0.0.1 with a models.toml in `workdir`; its log is kept."""

    def __init__(self, config_text: str, workdir: Path, *args: str, env: dict[str, str] | None = None,
                 command: list[str] | None = None) -> None:
        """`command` starts the server (default: this interpreter's `-m nomoat`); `serve` and its flags follow."""
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "models.toml"
        self.config.write_text(config_text)
        self.log_path = workdir / "server.log"
        self._log = self.log_path.open("wb")
        # State (converted adapters, stored responses) stays in the workdir unless a test says otherwise:
        # a test never writes into the user's own state dir.
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "NOMOAT_STATE_DIR": str(workdir / "state"), **(env or {})}
        argv = ["serve", "--config", str(self.config), "--port", str(self.port), *args]
        self.proc: subprocess.Popen[bytes] | ForkedProcess
        if command is None and _fork_server is not None:
            self.proc = _fork_server.start(argv, full_env, workdir, self.log_path)
        else:
            self.proc = subprocess.Popen([*(command or [sys.executable, "-m", "nomoat"]), *argv],
                                         cwd=workdir, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

    def wait_ready(self, timeout: float = 120.0) -> ServerProcess:
        try:
            wait_healthy(self.base_url, self.proc, timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{self.log()}") from None
        return self

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        """Stop the server without waiting for it to exit (a fixture's teardown): SIGTERM now; its exit
        (~0.7 s of draining and freeing the model) overlaps what runs next, and `reap()` collects it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            _closing.append(self.proc)
        self._log.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def run_nomoat(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m nomoat ARGS` to its exit, stdout and stderr captured; forked from the fork server when
    there is one, so a command pays none of the ~1.5 s of imports. `env` is the whole environment."""
    env = dict(os.environ) if env is None else env
    if _fork_server is None:
        return subprocess.run([sys.executable, "-m", "nomoat", *args], env=env, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="nomoat-cli-") as tmp:
        stdout, stderr = Path(tmp, "stdout"), Path(tmp, "stderr")
        proc = _fork_server.start(list(args), env, cwd or Path.cwd(), stdout, stderr=stderr)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        return subprocess.CompletedProcess(["nomoat", *args], code, stdout.read_text(), stderr.read_text())


_closing: list[subprocess.Popen[bytes] | ForkedProcess] = []
_fork_server: ForkServer | None = None


def use_fork_server(folder: Path) -> None:
    """From now on, servers started without a `command` are forked from one process that has imported
    nomoat (support/forkserver.py): ~1.5 s less per start on 2 cores. NOMOAT_TEST_FORK=0 turns it off."""
    global _fork_server
    if os.environ.get("NOMOAT_TEST_FORK", "1") == "0":
        return
    try:
        _fork_server = ForkServer(folder)
    except (OSError, RuntimeError) as exc:  # e.g. a temp dir too deep for a Unix socket's 108-byte path
        warnings.warn(f"test servers start as plain processes: {exc}", stacklevel=2)


def stop_fork_server() -> None:
    global _fork_server
    if _fork_server is not None:
        _fork_server.close()
        _fork_server = None


def reap(timeout: float = 30.0) -> None:
    """Wait for the servers `close()` left exiting; kill any still running after `timeout`."""
    while _closing:
        proc = _closing.pop()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
