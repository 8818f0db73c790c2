"""Shared fixtures: real `nomoat serve` subprocesses on free ports, the embedded model's path."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_N_CTX = 2048
TEST_PARALLEL = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_path() -> Path:
    from nomoat.config import embedded_model_path

    return embedded_model_path()


class ServerProcess:
    """A `python -m server serve` child on 127.0.0.1, with its log kept for failure reports."""

    def __init__(self, config_text: str, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.config = tmp / "models.toml"
        self.config.write_text(config_text)
        self.log_path = tmp / "server.log"
        self._log = self.log_path.open("wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nomoat", "serve", "--config", str(self.config),
             "--port", str(self.port), *args],
            cwd=tmp, stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
        )

    def wait_ready(self, timeout: float = 60.0) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

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


def models_toml(name: str = "smollm2-135m", *, parallel: int = TEST_PARALLEL, n_ctx: int = TEST_N_CTX,
                extra: str = "", server: str = "") -> str:
    return (
        f'default_model = "{name}"\n[server]\n{server}\n'
        f'[[models]]\nname = "{name}"\naliases = ["default"]\npath = "embedded:smollm2-135m"\n'
        f"n_ctx = {n_ctx}\nparallel = {parallel}\nn_threads = 2\n{extra}\n"
    )


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shared server: the embedded model as `smollm2-135m` (alias `default`)."""
    proc = ServerProcess(models_toml(), tmp_path_factory.mktemp("server")).wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def base_url(server: ServerProcess) -> str:
    return server.base_url


@pytest.fixture()
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120.0) as c:
        yield c


@pytest.fixture()
def start_server(tmp_path: Path) -> Iterator:
    """Start extra servers with their own config; each is stopped at the end of the test."""
    started: list[ServerProcess] = []

    def start(config_text: str, *args: str, env: dict[str, str] | None = None, wait: bool = True) -> ServerProcess:
        sub = tmp_path / f"s{len(started)}"
        sub.mkdir()
        proc = ServerProcess(config_text, sub, *args, env=env)
        started.append(proc)
        return proc.wait_ready() if wait else proc

    yield start
    for proc in started:
        proc.stop()


# The real-client tests' fixtures live with their helpers; imported here so that every test module
# shares one session-scoped server.
from clients_fixtures import client_model, clients_server, recorder  # noqa: E402,F401

pytest_plugins = ["support.inprocess"]
