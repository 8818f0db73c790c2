"""The HTTP connections below the ASGI app: a deadline for each request head, a cap on open connections, and
accept failures (no file descriptors left) logged once per interval instead of once per attempt.

uvicorn times out only a kept-alive connection that stays idle after a response (`timeout_keep_alive`); a
connection that opens and never completes its request head, dribbling a byte at a time or sending nothing,
it keeps for ever (h11_impl.py: the timer is armed in on_response_complete alone, and any byte cancels it).
Two hundred of those held 200 descriptors for minutes and, under a low open-file limit, stopped /health.
The guard is a subclass of uvicorn's h11 protocol, which the server then always speaks (uvicorn would pick
httptools where it is installed; its protocol class would need the same guard).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import resource
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..settings import Settings
from ..wire.errors import error_body

log = logging.getLogger(__name__)

# Descriptors kept free for what the server opens besides connections: model files, the response store,
# logs, thread pools' pipes, an adapter being loaded.
FD_RESERVE = 64
# The most connections the cap allows when the open-file limit leaves room for more: far above what one
# machine's clients open, well below what the process can hold.
AUTO_MAX_CONNECTIONS = 4096
# One log line per this many seconds for a repeated connection-level failure, with a count of the rest.
LOG_INTERVAL_SECONDS = 10.0
_ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message (selector_events.py)


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may do before it has sent a request head, and how many may be open at once."""

    header_timeout: float  # seconds from opening (or the first byte after a response) to a complete head
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        room = fd_room()
        cap = settings.max_connections
        if cap is None:
            cap = max(1, min(AUTO_MAX_CONNECTIONS, room))
        elif cap > room:
            log.warning("max_connections %d is more than the open-file limit leaves room for (about %d): past that, "
                        "connections fail with 'too many open files'; raise the limit (ulimit -n, LimitNOFILE=)",
                        cap, room)
        return cls(header_timeout=settings.header_timeout_seconds, max_connections=cap)


def fd_room() -> int:
    """Descriptors this process may still open, less FD_RESERVE: the soft RLIMIT_NOFILE less those open now."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return AUTO_MAX_CONNECTIONS
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc (macOS): assume a freshly started server's few dozen
        open_now = 32
    return soft - open_now - FD_RESERVE


class RepeatedLog:
    """A message logged at once the first time, then at most once per `interval` seconds with how many times it
    happened meanwhile (the count of a burst is logged when its interval ends). Used on the event loop only."""

    def __init__(self, logger: logging.Logger, interval: float = LOG_INTERVAL_SECONDS) -> None:
        self.logger = logger
        self.interval = interval
        self._last = -float("inf")
        self._suppressed = 0
        self._message = ""
        self._flush: asyncio.TimerHandle | None = None

    def warning(self, message: str) -> None:
        now = time.monotonic()
        self._message = message
        if now - self._last >= self.interval:
            self._last = now
            self.logger.warning("%s", message)
            return
        self._suppressed += 1
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(self._last + self.interval - now, self._report)

    def _report(self) -> None:
        self._flush = None
        if self._suppressed:
            self._last = time.monotonic()
            self.logger.warning("%s (%d times in the last %gs)", self._message, self._suppressed, self.interval)
            self._suppressed = 0


class AcceptFailureHandler:
    """The event loop's exception handler: asyncio calls it once per failed accept when no descriptor is left
    (EMFILE), which under a flood of connections is thousands of tracebacks a second; they become one line per
    interval. Anything else goes to the loop's default handler."""

    def __init__(self) -> None:
        self._log = RepeatedLog(log)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") != _ACCEPT_FAILED or not isinstance(exc, OSError):
            loop.default_exception_handler(context)
            return
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        self._log.warning(f"cannot accept connections: {exc.strerror} ({name}; open-file limit {soft}); "
                          "new connections wait in the listen queue until descriptors are freed")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head and a cap on open connections.

    The deadline runs from the connection's opening, and on a kept-alive connection from the first byte after a
    response (until then uvicorn's keep-alive timeout closes it when idle), until h11 has a whole head; past it
    the connection is closed. A connection past the cap is answered 503 and closed at once, before it holds a
    descriptor for long. `limits` and `refusals` are set on the subclass `guarded_protocol` makes.
    """

    limits: ClassVar[ConnectionLimits]
    refusals: ClassVar[RepeatedLog]

    _head_timer: asyncio.TimerHandle | None = None
    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self._refused = True
            self.transport = transport  # connection_lost closes it
            transport.write(_busy_answer(self.limits.max_connections))
            transport.close()
            self.refusals.warning(f"refused connections past max_connections ({self.limits.max_connections})")
            return
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._awaiting_head():
            self._arm_head_timer()
        else:
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Bytes of the next request already here (pipelined): its head is due as if they had just arrived.
        if self._awaiting_head() and self.conn.trailing_data[0]:
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _awaiting_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._awaiting_head():
            log.debug("closed a connection from %s that sent no whole request head in %gs (header_timeout_seconds)",
                      self.client, self.limits.header_timeout)
            self.transport.close()


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """The protocol class uvicorn builds each connection with (`Config(http=...)`), bound to `limits`."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits, "refusals": RepeatedLog(log)})


def _busy_answer(cap: int) -> bytes:
    """A whole HTTP/1.1 503 written before any request is read: the client reads it as its request's answer."""
    body = json.dumps(error_body(f"the server has its limit of {cap} open connections (max_connections); "
                                 "retry shortly", "server_error", "server_busy")).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n")
    return head.encode() + body
