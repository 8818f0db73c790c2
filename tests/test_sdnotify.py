"""The sd_notify protocol: the Notifier alone, and a real server talking to a socket the test binds."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import models_toml
from streams import wait_for

from nomoat.sdnotify import Notifier, monotonic_usec, watchdog_interval


class NotifyListener(threading.Thread):
    """A unix datagram socket standing in for systemd; keeps each datagram as a dict."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        self._closing = threading.Event()

    def run(self) -> None:
        while not self._closing.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def close(self) -> None:
        self._closing.set()
        self.join(5)
        self.sock.close()

    def states(self) -> list[str]:
        """The lifecycle messages in order, watchdog pings and bare STATUS updates left out."""
        keys = ("READY", "RELOADING", "STOPPING")
        return [k for m in self.messages for k in keys if k in m]


@pytest.fixture()
def listener(tmp_path: Path):
    started: list[NotifyListener] = []

    def make(address: str) -> NotifyListener:
        lst = NotifyListener(address)
        lst.start()
        started.append(lst)
        return lst

    yield make
    for lst in started:
        lst.close()


@pytest.mark.parametrize("abstract", [True, False])
def test_notifier_sends_one_datagram_per_call_in_field_order(listener, tmp_path, abstract):
    address = f"@nomoat-test-{uuid.uuid4().hex}" if abstract else str(tmp_path / "notify.sock")
    lst = listener(address)
    notifier = Notifier(address)
    assert notifier.ready("serving x")
    assert notifier.watchdog()
    assert notifier.reloading()
    assert notifier.stopping()
    wait_for(lambda: len(lst.messages) == 4, timeout=5)
    assert lst.messages[0] == {"READY": "1", "STATUS": "serving x"}
    assert lst.messages[1] == {"WATCHDOG": "1"}
    assert list(lst.messages[2]) == ["RELOADING", "MONOTONIC_USEC", "STATUS"]
    assert abs(int(lst.messages[2]["MONOTONIC_USEC"]) - monotonic_usec()) < 10_000_000
    assert lst.messages[3]["STOPPING"] == "1"


def test_notifier_without_socket_or_with_a_dead_one_never_raises(tmp_path):
    assert Notifier(None).ready("x") is False
    dead = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert dead.ready("x") is False
    assert dead.watchdog() is False


def test_watchdog_interval_is_half_the_timeout_and_only_for_our_pid():
    assert watchdog_interval(None, None) is None
    assert watchdog_interval(0, None) is None
    assert watchdog_interval(10_000_000, None) == 5.0
    assert watchdog_interval(10_000_000, os.getpid()) == 5.0
    assert watchdog_interval(10_000_000, 1, pid=2) is None


def test_server_reports_ready_watchdog_reloading_and_stopping_in_order(start_server, listener):
    address = f"@nomoat-test-{uuid.uuid4().hex}"
    lst = listener(address)
    srv = start_server(models_toml(), env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
    wait_for(lambda: "READY" in lst.states(), timeout=30, what="READY=1")
    ready_at = next(i for i, m in enumerate(lst.messages) if "READY" in m)
    assert "smollm2-135m" in lst.messages[ready_at]["STATUS"]
    wait_for(lambda: sum("WATCHDOG" in m for m in lst.messages[ready_at:]) >= 2, timeout=30, what="watchdog pings")

    before_hup = monotonic_usec()
    srv.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: lst.states() == ["READY", "RELOADING", "READY"], timeout=60, what="reload notifications")
    reloading = next(m for m in lst.messages if "RELOADING" in m)
    assert int(reloading["MONOTONIC_USEC"]) >= before_hup

    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(60) == 0, srv.log()
    time.sleep(0.3)
    assert lst.states() == ["READY", "RELOADING", "READY", "STOPPING"]
    assert all(set(m) <= {"READY", "RELOADING", "STOPPING", "STATUS", "WATCHDOG", "MONOTONIC_USEC"} for m in lst.messages)
