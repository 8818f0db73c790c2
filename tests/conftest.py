"""Shared fixtures: real `nomoat serve` subprocesses on free ports, the embedded model's path."""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.model import q8_model_path
from support.process import THREADS, ServerProcess, free_port, reap, stop_fork_server, use_fork_server  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
TEST_N_CTX = 2048
TEST_PARALLEL = 4
TEST_THREADS = THREADS


def model_path() -> Path:
    """The model test servers and oracles run: the embedded one requantised to Q8_0 (support/model.py)."""
    return q8_model_path()


def models_toml(name: str = "smollm2-135m", *, parallel: int = TEST_PARALLEL, n_ctx: int = TEST_N_CTX,
                extra: str = "", server: str = "", load: str = "startup") -> str:
    """The test model (model_path()), loaded before the server reports ready (`load="startup"`, as the shipped
    models.toml does), so a test's first request and its metrics find it loaded; tests/test_lifecycle.py
    covers models loaded on demand."""
    return (
        f'default_model = "{name}"\n[server]\n{server}\n'
        f'[[models]]\nname = "{name}"\naliases = ["default"]\npath = "{model_path()}"\n'
        f'n_ctx = {n_ctx}\nparallel = {parallel}\nn_threads = {TEST_THREADS}\nload = "{load}"\n{extra}\n'
    )


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker per core this process may run on, at most four (each worker starts its own
    shared servers, ~1 GiB of memory apiece)."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with few tests first, each file's tests in their own order. xdist hands out whole files
    (--dist loadfile) in this order (--no-loadscope-reorder): the files with few tests are mostly the ones
    that start their own servers and take longest, the files with many are mostly quick in-process
    checks, and a long file handed out last would leave the other workers idle while it runs."""
    per_file = collections.Counter(item.path for item in items)
    items.sort(key=lambda item: (per_file[item.path], str(item.path)))


@pytest.fixture(scope="session", autouse=True)
def _server_processes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Set up first, torn down last: the fork server that test servers start from (not for a session of fast
    tests alone, which starts no server), and at the end the servers that fixtures closed without waiting
    (ServerProcess.close)."""
    if not all(item.get_closest_marker("fast") for item in request.session.items):
        use_fork_server(tmp_path_factory.mktemp("forkserver"))
    yield
    reap()
    stop_fork_server()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shared server: the embedded model as `smollm2-135m` (alias `default`)."""
    proc = ServerProcess(models_toml(), tmp_path_factory.mktemp("server")).wait_ready()
    yield proc
    proc.close()


@pytest.fixture(scope="session")
def base_url(server: ServerProcess) -> str:
    return server.base_url


@pytest.fixture()
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120.0) as c:
        yield c


@pytest.fixture(scope="session")
def uncached_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The embedded model with the prefix cache off and one slot: every request is a cold prompt computed
    alone, the reference that prefix-cache tests compare with, and a server that runs one request at a time.
    Stateless between requests, so test modules share it."""
    proc = ServerProcess(models_toml(parallel=1, extra="prefix_cache = false"), tmp_path_factory.mktemp("uncached"))
    yield proc.wait_ready()
    proc.close()


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
        proc.close()


# The real-client tests' fixtures live with their helpers; imported here so that every test module
# shares one session-scoped server.
from clients_fixtures import client_model, clients_server, recorder  # noqa: E402,F401

# support.fast marks the tests `pytest -m fast` runs, and fails one so marked that starts a server or a model.
pytest_plugins = ["support.inprocess", "support.fast"]
