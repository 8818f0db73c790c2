"""Connections that never finish their request head, the cap on open connections, and running out of file
descriptors, against real `nomoat serve` processes (issue #28, item 10): what uvicorn alone left open for minutes,
and a log that grew by 374 MB of tracebacks in 30 s, now closed on a deadline and logged once per interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ServerProcess, models_toml
from streams import wait_for

from nomoat.http.connections import FD_RESERVE, ConnectionLimits, RepeatedLog, fd_room
from nomoat.settings import Settings

PARTIAL_HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\n"
# A server process whose open-file limit is low, as a small container or a unit's LimitNOFILE= may set it.
LOW_NOFILE = 128
LIMITED = [sys.executable, "-c", "import resource, runpy, sys; "
           f"resource.setrlimit(resource.RLIMIT_NOFILE, ({LOW_NOFILE}, {LOW_NOFILE})); "
           "sys.argv = ['nomoat', *sys.argv[1:]]; runpy.run_module('nomoat', run_name='__main__')"]


def health(base_url: str) -> int:
    return httpx.get(base_url + "/health", timeout=30).status_code


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has answered or closed `sock`, which never sent a whole request: its 503 past the cap,
    EOF or a reset. False while it is open and silent."""
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def at_eof(sock: socket.socket) -> bool:
    """Whether the server has closed `sock`: EOF or a reset (bytes still unread are read past)."""
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def opened(port: int, n: int, first_bytes: bytes = b"") -> list[socket.socket]:
    socks = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        if first_bytes:
            sock.sendall(first_bytes)
        socks.append(sock)
    return socks


class Dribbler(threading.Thread):
    """Sends each socket one more header byte at a time, as a slow-header attack does, until it is closed."""

    def __init__(self, socks: list[socket.socket]) -> None:
        super().__init__(daemon=True)
        self.socks = socks
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):  # the attack's own pace, not a wait for the server
            for sock in self.socks:
                with contextlib.suppress(OSError):  # closed by the server: what the test waits for
                    sock.send(b"X")


@pytest.fixture()
def closing() -> Iterator[list[socket.socket]]:
    """Sockets a test opened, closed at its end whatever happened."""
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


def test_connections_that_never_finish_their_head_are_closed_while_health_answers(start_server, closing):
    srv = start_server(models_toml(), "--header-timeout-seconds", "2")
    closing += opened(srv.port, 20, PARTIAL_HEAD)
    silent = opened(srv.port, 5)  # never send a byte: uvicorn has no timer at all for these
    closing += silent
    dribbler = Dribbler(closing[:20])
    dribbler.start()
    try:
        assert health(srv.base_url) == 200  # meanwhile
        wait_for(lambda: all(closed_by_server(s) for s in closing), timeout=60, what="partial heads closed")
    finally:
        dribbler.stop.set()
        dribbler.join()
    assert health(srv.base_url) == 200
    # A kept-alive connection's next head is held to the deadline too, from its first byte.
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(PARTIAL_HEAD + b"\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.sendall(PARTIAL_HEAD)
        wait_for(lambda: at_eof(sock), timeout=60, what="the second head's deadline")


def test_connections_past_the_cap_are_answered_503_and_closed(start_server, closing):
    srv = start_server(models_toml(), "--max-connections", "4", "--header-timeout-seconds", "120")

    def refused() -> bool:
        # Four held open, silent, well within their deadline; one refused while the server still counted a
        # connection that had just closed (wait_ready's) is replaced.
        for sock in [s for s in closing if closed_by_server(s)]:
            closing.remove(sock)
            sock.close()
        closing.extend(opened(srv.port, 4 - len(closing)))
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
            try:
                sock.sendall(PARTIAL_HEAD + b"\r\n")
                answer = sock.recv(4096)
            except OSError:  # reset: the 503 was written and the socket closed before the request was read
                return True
        return answer.startswith(b"HTTP/1.1 503") and b"max_connections" in answer

    wait_for(refused, timeout=60, what="a fifth connection refused")
    for sock in closing:
        sock.close()
    wait_for(lambda: health(srv.base_url) == 200, timeout=60, what="served again once the four closed")
    assert "refused connections past max_connections (4)" in srv.log()


def test_running_out_of_descriptors_logs_a_line_per_interval_and_recovers(tmp_path: Path, closing):
    """More connections than the process may open files, with the cap raised past the limit on purpose: accept
    fails (EMFILE) over and over, asyncio reports each failure, and the log gets a line or two, not thousands."""
    srv = ServerProcess(models_toml(), tmp_path, "--max-connections", "1000", "--header-timeout-seconds", "2",
                        command=LIMITED).wait_ready()
    try:
        closing += opened(srv.port, 200)  # the kernel completes each handshake; the listen queue holds the rest
        wait_for(lambda: "cannot accept connections" in srv.log(), timeout=60, what="accept failing")
        # Every connection the server accepts reaches its deadline and is closed, freeing a descriptor for the
        # next one in the queue, until it has been through all 200: many seconds of failing accepts.
        wait_for(lambda: all(closed_by_server(s) for s in closing), timeout=120, what="all 200 served and closed")
        assert health(srv.base_url) == 200
        log = srv.log()
        lines = [line for line in log.splitlines() if "accept" in line]
        assert 1 <= len(lines) <= 4, lines
        assert "Traceback" not in log and "EMFILE; open-file limit 128" in lines[0]
    finally:
        srv.stop()


def test_the_default_cap_fits_under_the_open_file_limit(tmp_path: Path, closing):
    """Left to its default, the cap sits below what the process may open: a flood is refused, accept never fails."""
    srv = ServerProcess(models_toml(), tmp_path, "--header-timeout-seconds", "120", command=LIMITED).wait_ready()
    try:
        found = re.search(r"at most (\d+) open at once", srv.log())
        assert found is not None, srv.log()
        cap = int(found.group(1))
        assert 1 <= cap <= LOW_NOFILE - FD_RESERVE
        def still_open() -> int:
            return sum(not closed_by_server(s) for s in closing)

        for _ in range(8):  # 200 connections, each batch refused past the cap before the next comes
            closing += opened(srv.port, 25)
            wait_for(lambda: still_open() <= cap, timeout=60, what="refusals")
        assert still_open() == cap, "the cap's worth are held, the rest refused"
        for sock in closing:
            sock.close()
        wait_for(lambda: health(srv.base_url) == 200, timeout=60, what="served once the held ones closed")
        assert "cannot accept connections" not in srv.log()
        assert f"refused connections past max_connections ({cap})" in srv.log()
    finally:
        srv.stop()


def test_the_default_cap_is_the_room_the_open_file_limit_leaves():
    settings = Settings()
    assert ConnectionLimits.from_settings(settings).max_connections == max(1, min(4096, fd_room()))
    assert ConnectionLimits.from_settings(Settings(max_connections=7)).max_connections == 7
    assert ConnectionLimits.from_settings(settings).header_timeout == settings.header_timeout_seconds == 20.0


def test_a_repeated_warning_is_logged_once_then_counted(caplog):
    caplog.set_level(logging.WARNING, "nomoat.test")

    async def main() -> None:
        counted = asyncio.Event()

        class Watch(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "times in the last" in record.getMessage():
                    counted.set()

        logger = logging.getLogger("nomoat.test")
        logger.addHandler(watch := Watch())
        try:
            repeated = RepeatedLog(logger, interval=0.2)
            for _ in range(50):
                repeated.warning("out of descriptors")
            await asyncio.wait_for(counted.wait(), 30)  # the interval's end logs the count
        finally:
            logger.removeHandler(watch)

    asyncio.run(main())
    assert [r.getMessage() for r in caplog.records] == ["out of descriptors",
                                                        "out of descriptors (49 times in the last 0.2s)"]
