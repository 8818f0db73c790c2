"""`nomoat worker`: this machine's CPU served to another nomoat's `rpc` models through llama.cpp's RPC server."""

from __future__ import annotations

import ipaddress
import sys
import threading
from pathlib import Path

from .endpoints import Endpoint
from .ggml import RpcUnavailable, start_server

NO_AUTH_WARNING = ("WARNING: llama.cpp's RPC protocol has no authentication and no encryption: anyone who can reach "
                   "{endpoint} can run computations on this machine and read what it holds. Listen on a trusted "
                   "network only (a LAN behind a firewall, a VPN, or 127.0.0.1 with an SSH tunnel).")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_worker(host: str, port: int, threads: int, cache_dir: Path | None) -> int:
    """Serve until killed; 2 (with the way to rebuild) where this llama-cpp-python has no RPC backend, 1 where
    llama.cpp's server could not start."""
    endpoint = Endpoint(host, port)
    if not is_loopback(host):
        print(NO_AUTH_WARNING.format(endpoint=endpoint), file=sys.stderr)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
    # llama.cpp's server blocks in C, where Ctrl+C cannot reach Python: it runs on a thread of its own and this
    # thread waits for it, so Ctrl+C ends the worker quietly with the shell's code for it (130), no traceback.
    done = threading.Event()
    failed: list[RpcUnavailable] = []

    def serve() -> None:
        try:
            start_server(endpoint, cache_dir, threads)
        except RpcUnavailable as exc:
            failed.append(exc)
        finally:
            done.set()

    try:
        print(f"nomoat worker: serving this machine's CPU ({threads} threads) to RPC clients on {endpoint}",
              file=sys.stderr, flush=True)
        threading.Thread(target=serve, name="rpc server", daemon=True).start()
        done.wait()
    except KeyboardInterrupt:
        print(f"nomoat worker: stopped (Ctrl+C); {endpoint} is closed", file=sys.stderr)
        return 130
    if failed:
        print(f"nomoat worker: {failed[0]}", file=sys.stderr)
        return 2
    # It serves for ever; returning means it could not start (its reason is printed above: a port in use...).
    print(f"nomoat worker: llama.cpp's RPC server on {endpoint} stopped", file=sys.stderr)
    return 1
