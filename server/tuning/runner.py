"""The trainer child process of one job: started at idle priority with its own thread count, its stdout read as
events (spec.py's contract), its stderr kept in the job's train.log; paused with SIGTERM, cancelled with SIGKILL.

Idle priority: training is batch work beside a server whose requests want their first token now. SCHED_IDLE
(Linux) runs the child only when no other task wants the core, which nice 19 does not promise (a niced task
still gets ~1.5 % per core against nice 0, and more beside other niced work); elsewhere nice 19 is what there is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .spec import Event, parse_event

log = logging.getLogger(__name__)

# How long a paused child may take to save its checkpoint and exit before it is killed (a checkpoint of a small
# LoRA writes in well under a second; a step under way finishes first).
PAUSE_WAIT_SECONDS = 120.0
# How long a killed child's exit may take to be seen (the kernel frees its memory at once).
KILL_WAIT_SECONDS = 10.0
# The most of train.log a failed job's message quotes.
LOG_TAIL_CHARS = 2000
# A line of the child's stdout longer than this is not one of our events (a library's progress bar, say).
MAX_LINE_BYTES = 1 << 20


def trainer_command(spec: Path) -> list[str]:
    return [sys.executable, "-m", "nomoat.tuning.train", str(spec)]


def _lower_priority() -> None:
    """In the child, before exec: idle scheduling where the OS has it, else the lowest nice."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # type: ignore[attr-defined,unused-ignore]
    except (AttributeError, OSError):
        os.nice(19)


class TrainerProcess:
    """One running child. `on_event` is called on the event loop for each event line, in order."""

    def __init__(self, command: Sequence[str], log_path: Path, threads: int, on_event: Callable[[Event], None],
                 *, idle: bool = True) -> None:
        self._command = list(command)
        self._idle = idle
        self._log_path = log_path
        self._threads = threads
        self._on_event = on_event
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        threads = str(self._threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "NOMOAT_TRAIN_THREADS": threads,
               "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        stderr = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:  # the child holds its own copy of the descriptor
            self._process = await asyncio.create_subprocess_exec(
                *self._command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=stderr,
                env=env, preexec_fn=_lower_priority if self._idle else None, limit=MAX_LINE_BYTES)
        finally:
            os.close(stderr)
        self._reader = asyncio.ensure_future(self._read())

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        while True:
            try:
                line = await self._process.stdout.readline()
            except ValueError:  # longer than MAX_LINE_BYTES: not an event; the rest of it is skipped
                continue
            if not line:
                return
            event = parse_event(line.decode("utf-8", "replace"))
            if event is not None:
                self._on_event(event)

    async def wait(self) -> int:
        """The exit status, once the child ended and every line it printed was handled."""
        assert self._process is not None and self._reader is not None
        status = await self._process.wait()
        await self._reader
        return status

    def pause(self) -> None:
        """SIGTERM: the child saves a checkpoint and exits (spec.py's `paused` event)."""
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGTERM)

    async def stop(self, timeout: float = PAUSE_WAIT_SECONDS) -> None:
        """Pause, and kill the child when it has not exited within `timeout`."""
        self.pause()
        if self._process is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._process.wait()), timeout)
            except TimeoutError:
                log.warning("trainer %s did not stop within %.0fs of SIGTERM: killed", self.pid, timeout)
                await self.kill()

    async def kill(self) -> None:
        """SIGKILL, and wait (bounded) for the exit: its memory is the kernel's again."""
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()
        try:
            await asyncio.wait_for(asyncio.shield(self._process.wait()), KILL_WAIT_SECONDS)
        except TimeoutError:
            log.error("trainer %s has not exited %.0fs after SIGKILL", self.pid, KILL_WAIT_SECONDS)

    def log_tail(self) -> str:
        try:
            with open(self._log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - LOG_TAIL_CHARS))
                return f.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""
