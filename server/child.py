"""A model with `rpc` served by a child `nomoat serve` process of its own, as llama.cpp's router runs each model in
a child llama-server.

Why a process: llama.cpp's RPC client aborts the whole process when a worker is unreachable or goes away
(ggml-rpc.cpp's RPC_STATUS_ASSERT → GGML_ABORT), and so does `llama-server --rpc`. In a child, that abort ends
only this model: the parent sees the child exit, fails the requests it forwarded with an error, marks the
model failed with the child's last words, and loads it again once its workers answer.
"""

from __future__ import annotations

import collections
import ctypes
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from .engine.in_flight import InFlight
from .errors import ConfigError
from .models_toml import AdapterConfig, ModelConfig, ModelsFile, StackConfig
from .rpc.endpoints import WorkerUnreachable, check_reachable, parse_endpoint
from .settings import Settings

log = logging.getLogger(__name__)

_STOP_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1
_TAIL_LINES = 20

# The parent's settings a child serves with; the rest (address, keys, UI, systemd) are its own. The state
# dir is shared, so the parent reads and deletes the responses its children stored and a child's
# converted adapters outlive it: the response store is SQLite in WAL mode, and conversions are
# written under a temporary name and renamed.
_INHERITED = ("threads", "queue_size", "max_body_bytes", "body_timeout_seconds", "send_timeout_seconds",
              "max_tokens_limit", "max_prompt_tokens", "max_concurrent_streams", "request_timeout_seconds",
              "log_format", "memory_budget", "shutdown_grace_seconds", "responses_max_age", "responses_max_count",
              "responses_max_total_bytes", "responses_max_stored_bytes", "responses_max_chain_length",
              "responses_max_chain_bytes", "responses_store_timeout_seconds")


def start_child(config: ModelConfig, models_file: ModelsFile, settings: Settings,
                on_exit: Callable[[ChildModel, str], None]) -> ChildModel:
    """`config`'s child process, serving its adapters and stacks of `models_file` too, started (blocking)."""
    adapters = [a for a in models_file.adapters if models_file.base_of(a.base) == config.name]
    stacks = [s for s in models_file.stacks if models_file.base_of(s.base) == config.name]
    child = ChildModel(config, adapters, stacks, settings, on_exit)
    child.start()
    return child


class ChildModel:
    """One child process serving one model (its adapters and stacks too) on 127.0.0.1, behind a random key.

    `start()` blocks until the child answers /health (run it off the event loop); `on_exit(child, reason)` is
    called from a thread when the child ends without being asked to.
    """

    def __init__(self, config: ModelConfig, adapters: list[AdapterConfig], stacks: list[StackConfig],
                 settings: Settings, on_exit: Callable[[ChildModel, str], None], *,
                 load_timeout: float = 600.0) -> None:
        self.config = config
        self._adapters, self._stacks, self._settings = adapters, stacks, settings
        self._on_exit = on_exit
        self._load_timeout = load_timeout
        self.api_key = secrets.token_urlsafe(32)
        self.base_url = ""
        self._in_flight = InFlight()  # forwarded requests, counted on the event loop by the forwarder
        self._dir = Path(tempfile.mkdtemp(prefix=f"nomoat-{_safe(config.name)}-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._stopping = False
        self._reader: threading.Thread | None = None

    @property
    def outstanding(self) -> int:
        """Forwarded requests in flight (http/forward.py counts them)."""
        return self._in_flight.count

    @outstanding.setter
    def outstanding(self, value: int) -> None:
        self._in_flight.count = value

    async def wait_idle(self) -> None:
        """Return once no forwarded request is in flight (at once when none is), woken where the last one ends."""
        await self._in_flight.wait_idle()

    # --- start ---------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the child and wait until it serves; ConfigError with the reason when it cannot."""
        from .rpc.ggml import RpcUnavailable, require_rpc  # llama_cpp: only once an rpc model loads

        try:
            require_rpc()
            check_reachable([parse_endpoint(e) for e in self.config.rpc])
        except (RpcUnavailable, WorkerUnreachable) as exc:
            self._cleanup()
            raise ConfigError(str(exc)) from None
        port = _free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        config_file = self._dir / "models.toml"
        config_file.write_text(self._models_toml())
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("NOMOAT_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env["NOMOAT_API_KEY"] = self.api_key
        env.setdefault("GGML_NO_BACKTRACE", "1")  # an abort's reason, not a gdb backtrace, ends its stderr
        command = [sys.executable, "-m", "nomoat", "serve", "--config", str(config_file), "--host", "127.0.0.1",
                   "--port", str(port), "--state-dir", str(self._settings.resolved_state_dir()), "--rpc-in-process", "--no-ui",
                   "--no-watch-adapters", "--log-level", "warning"]
        self._proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_die_with_parent)
        self._reader = threading.Thread(target=self._watch, name=f"nomoat-child-{self.config.name}", daemon=True)
        self._reader.start()
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        log.info("model %s serves from child process %d on %s (workers %s)", self.config.name, self._proc.pid,
                 self.base_url, ", ".join(self.config.rpc))

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._load_timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self._proc.poll() is not None:
                    assert self._reader is not None
                    self._reader.join(timeout=_STOP_SECONDS)  # its last words
                    raise ConfigError(self.exit_reason())
                try:
                    if client.get(self.base_url + "/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise ConfigError(f"its process did not serve within {self._load_timeout:.0f}s")
                time.sleep(0.1)

    def _models_toml(self) -> str:
        server = {name: getattr(self._settings, name) for name in _INHERITED if getattr(self._settings, name) is not None}
        server["max_streams_per_key"] = self._settings.max_concurrent_streams  # one key: the parent's
        model = self.config.model_dump(exclude_none=True) | {"load": "startup"}
        model.pop("keep_alive", None)  # the parent decides when it unloads
        tables = [("server", server), ("models", model)]
        tables += [("adapters", a.model_dump(exclude_none=True)) for a in self._adapters]
        tables += [("stacks", s.model_dump(exclude_none=True)) for s in self._stacks]
        return "".join(_toml_table(name, values, array=name != "server") for name, values in tables)

    # --- the running child ---------------------------------------------------------

    def _watch(self) -> None:
        """Forward the child's log, keep its last lines, and tell the owner when it ends unasked."""
        proc = self._proc
        assert proc is not None and proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._tail.append(line)
                log.warning("[%s] %s", self.config.name, line)
        proc.wait()
        if not self._stopping:
            reason = self.exit_reason()
            log.error("model %s: %s", self.config.name, reason)
            self._on_exit(self, reason)

    def exit_reason(self) -> str:
        """Why the child ended, in its own last words (a worker that went away: llama.cpp's RPC error)."""
        code = self._proc.returncode if self._proc is not None else None
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit status {code}"
        tail = " | ".join(_bare(line) for line in list(self._tail)[-3:])[-600:]
        if "unreachable" in tail or "configuration error" in tail:  # its own clean refusal says it all
            return tail.split("configuration error:", 1)[-1].strip(" |")
        return f"its process ended ({how}), workers {', '.join(self.config.rpc)}" + (f": {tail}" if tail else "")

    def wait_exit(self, timeout: float) -> str | None:
        """Why the child ended, once it has within `timeout` seconds (with its last words); None while it runs."""
        if self._proc is None:
            return None
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        if self._reader is not None:
            self._reader.join(timeout=timeout)
        return self.exit_reason()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def abort(self, reason: str) -> None:
        """Shutdown past its grace: end the child now; the forwarded requests end with an error."""
        log.warning("stopping model %s's process: %s", self.config.name, reason)
        self._signal(signal.SIGKILL)

    def close(self) -> None:
        """Stop the child (SIGTERM: it drains; SIGKILL past the wait) and remove its files (blocking)."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=_STOP_SECONDS)
        self._cleanup()

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, sig)

    def _cleanup(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


# A log line's "2026-01-01 10:00:00,000 ERROR nomoat.llama_cpp: " and a C source's ".../ggml-rpc.cpp:569: ".
_PREFIX = re.compile(r"^(\d{4}-\d\d-\d\d [\d:,]+ [A-Z]+ [\w.]+: )?(\S*/[\w.-]+\.(c|cpp|h):\d+: )?")


def _bare(line: str) -> str:
    return _PREFIX.sub("", line, count=1)


def _die_with_parent() -> None:
    """In the child before exec: Linux sends it SIGTERM when the parent dies, even by SIGKILL, so no orphan keeps
    holding the workers (a worker serves one client at a time). Strictly, the signal follows the thread that
    started the child: here the event loop's executor threads, which live as long as the server."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40]


def _toml_table(name: str, values: dict[str, Any], *, array: bool) -> str:
    header = f"[[{name}]]" if array else f"[{name}]"
    return header + "\n" + "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in values.items()) + "\n"


def _toml_value(value: Any) -> str:
    """A TOML value: JSON's strings, numbers, booleans and arrays are TOML's; a dict is an inline table."""
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)
