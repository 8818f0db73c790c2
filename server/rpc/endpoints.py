"""Where RPC workers are: host:port endpoints, parsed and checked for a listener, without llama.cpp."""

from __future__ import annotations

import socket
from dataclasses import dataclass

DEFAULT_PORT = 50052  # llama.cpp's rpc-server's
_CONNECT_TIMEOUT = 3.0


class WorkerUnreachable(Exception):
    """A worker does not accept connections (llama.cpp would abort the process on it)."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """`host:port` (`[v6]:port` for IPv6) → Endpoint; ValueError saying what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or any(c.isspace() or c in "[]/" for c in host):
        raise ValueError(f"{text!r} is not host:port")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return Endpoint(host, int(port))


def check_reachable(endpoints: list[Endpoint], timeout: float = _CONNECT_TIMEOUT) -> None:
    """A TCP connect to each worker: WorkerUnreachable names the first that refuses or does not answer."""
    for endpoint in endpoints:
        try:
            socket.create_connection((endpoint.host, endpoint.port), timeout=timeout).close()
        except OSError as exc:
            raise WorkerUnreachable(f"worker {endpoint} unreachable: {exc.strerror or exc}") from None
