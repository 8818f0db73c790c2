"""The listening sockets, made before any model loads: a port in use fails the start at once instead of after
minutes of loading, and uvicorn later serves on these very sockets, so nothing can take the port in between."""

from __future__ import annotations

import errno
import socket

from ..settings import Settings

# uvicorn's own default backlog: connections made while the models load wait in it and are served once they have.
BACKLOG = 2048


class CannotListen(Exception):
    """The address cannot be listened on; the message is the one line the command prints."""


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound, listening sockets for every address `host` names, made as asyncio's create_server makes them
    (SO_REUSEADDR, an IPv6 socket for IPv6 alone), so `localhost` still listens on both ::1 and 127.0.0.1."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CannotListen(f"cannot listen on {host}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            # Listening now, not only bound: two bound sockets with SO_REUSEADDR may share a port until one listens.
            sock.listen(BACKLOG)
    except OSError as exc:
        close_all(sockets)
        raise CannotListen(_why(host, port, exc)) from None
    return sockets


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def _why(host: str, port: int, exc: OSError) -> str:
    where = f"port {port}" if host == Settings.model_fields["host"].default else f"port {port} on {host}"
    if exc.errno == errno.EADDRINUSE:
        return f"{where} is in use (by another nomoat? try --port)"
    return f"cannot listen on {where}: {exc.strerror or exc}"
