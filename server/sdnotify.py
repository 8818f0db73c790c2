"""The systemd notify protocol (sd_notify) over a unix datagram socket, with the watchdog interval it implies."""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    """Sends `KEY=value` datagrams to $NOTIFY_SOCKET; does nothing when there is no socket.

    The address comes from Settings (systemd puts it in NOTIFY_SOCKET): a filesystem path, or
    `@name` for a socket in the abstract namespace. A failed send is logged once and never
    raised: a lost notification must not take the server down.
    """

    def __init__(self, address: str | None) -> None:
        self.address = _socket_address(address) if address else None
        self._sock: socket.socket | None = None
        self._warned = False

    def send(self, **fields: str | int) -> bool:
        """One datagram, one `KEY=value` line per field, in the order given (READY before STATUS)."""
        if self.address is None:
            return False
        payload = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd at %r: %s", self.address, exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def reloading(self, status: str = "reloading models.toml") -> bool:
        # Type=notify-reload (systemd 253+) requires MONOTONIC_USEC with RELOADING=1.
        return self.send(RELOADING=1, MONOTONIC_USEC=monotonic_usec(), STATUS=status)

    def stopping(self, status: str = "draining in-flight requests") -> bool:
        return self.send(STOPPING=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(watchdog_usec: int | None, watchdog_pid: int | None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half the timeout, as sd_watchdog_enabled advises), or None.

    systemd sets WATCHDOG_PID to the main process; another pid means the watchdog is not ours.
    """
    if not watchdog_usec or watchdog_usec <= 0:
        return None
    if watchdog_pid is not None and watchdog_pid != (os.getpid() if pid is None else pid):
        return None
    return watchdog_usec / 2 / 1_000_000


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _socket_address(address: str) -> str | bytes:
    if address.startswith("@"):
        return b"\0" + address[1:].encode()  # abstract namespace: a leading NUL, no file
    return address
