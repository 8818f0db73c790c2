"""Test servers forked from one process that has imported nomoat already.

A `python -m nomoat serve` spends ~1.5 s of its ~2.4 s start-up on imports (llama_cpp, pydantic,
starlette and nomoat's own request models) on a 2-core machine, and the suite starts dozens of
servers. This process imports those modules once, then forks a child per request that runs
`nomoat.cli.main(argv)` with the request's environment, working directory and log file, as
`python -m nomoat` would. It stays single-threaded, so forking is safe, and never imports what reads
the environment at import time (huggingface_hub), so each child reads its own.

Protocol: one JSON request per connection on a Unix socket ({"argv", "env", "cwd", "log", "stderr", "status"}),
answered with the child's pid. When a child exits, its exit code (negative: the signal, as
subprocess.Popen reports it) is written to the request's `status` file. The server ends when its
stdin closes (the test session ended), after its children have: those still running then get SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any


class ForkedProcess:
    """What tests use of subprocess.Popen, for a server that the fork server started (not our child)."""

    def __init__(self, pid: int, status: Path, args: list[str]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self._status = status

    def poll(self) -> int | None:
        if self.returncode is None and self._status.exists():
            self.returncode = int(self._status.read_text())
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # exited; the fork server writes its status next
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The client side: starts the fork server on first use and asks it for servers."""

    def __init__(self, folder: Path) -> None:
        self._socket = folder / "forkserver.sock"
        self._count = 0
        with (folder / "forkserver.log").open("wb") as log:  # the child keeps its own copy of the descriptor
            self._proc = subprocess.Popen([sys.executable, __file__, str(self._socket)], stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 120
        while not self._socket.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the test fork server did not start: {(folder / 'forkserver.log').read_text()}")
            time.sleep(0.02)

    def start(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path,
              stderr: Path | None = None) -> ForkedProcess:
        """`nomoat ARGV` with its stdout in `log`, and its stderr there too unless `stderr` names a file."""
        self._count += 1
        status = Path(f"{log}.exit-{self._count}")
        request = {"argv": argv, "env": env, "cwd": str(cwd), "log": str(log), "stderr": str(stderr or log),
                   "status": str(status)}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(self._socket))
            conn.sendall(json.dumps(request).encode())
            conn.shutdown(socket.SHUT_WR)
            pid = int(_read_all(conn))
        return ForkedProcess(pid, status, ["nomoat", *argv])

    def close(self) -> None:
        """End the fork server once its children have exited."""
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _read_all(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# --- the fork server ------------------------------------------------------------------------------

def _serve(socket_path: str) -> None:
    import nomoat.cli
    import nomoat.daemon
    import nomoat.http.app  # imported so that every forked child inherits it

    # Read at import from the environment: a child must import it with its own (HF_ENDPOINT, offline mode).
    assert "huggingface_hub" not in sys.modules, "the fork server must not import huggingface_hub"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path + ".tmp")
    os.rename(socket_path + ".tmp", socket_path)  # the client waits for the name: it appears listening
    listener.listen(16)
    children: dict[int, str] = {}
    stdin_open = True
    ending = 0.0  # when stdin closed: servers a test left running get SIGTERM, then SIGKILL 30 s on
    while stdin_open or children:
        watched = [listener, sys.stdin] if stdin_open else [listener]
        ready, _, _ = select.select(watched, [], [], 0.05)
        _reap(children)
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 1):
            stdin_open, ending = False, time.monotonic()
            _signal_all(children, signal.SIGTERM)
        if ending and time.monotonic() - ending > 30:
            _signal_all(children, signal.SIGKILL)
        if listener in ready:
            conn, _ = listener.accept()
            with conn:
                request = json.loads(_read_all(conn))
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    conn.close()
                    _child(request, nomoat.cli.main)
                children[pid] = request["status"]
                conn.sendall(str(pid).encode())


def _signal_all(children: dict[int, str], sig: int) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _reap(children: dict[int, str]) -> None:
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        path = children.pop(pid, None)
        if path is not None:
            Path(path + ".tmp").write_text(str(os.waitstatus_to_exitcode(status)))
            os.rename(path + ".tmp", path)


def _child(request: dict[str, Any], main: Any) -> None:
    """In the forked child: become `python -m nomoat ARGV` with the request's environment; never returns."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path in ((1, request["log"]), (2, request["stderr"])):
            log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(log, fd)
            os.close(log)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        sys.stdin = open(0)  # noqa: SIM115  (the process's own, for its life)
        sys.stdout = open(1, "w", buffering=1)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1)  # noqa: SIM115
        sys.argv = ["nomoat", *request["argv"]]
        code = main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        for thread in threading.enumerate():  # as the interpreter's own exit: non-daemon threads finish
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    _serve(sys.argv[1])
