"""Background tasks: started by name, kept until done, a failure logged once, all cancelled and awaited on close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Supervisor:
    """The background tasks of one owner (the daemon, the model registry, the adapter catalogue).

    asyncio keeps only a weak reference to a task, so a task nobody holds can be collected mid-run; the
    supervisor holds each until it is done. A task that fails is logged here, with its name and traceback,
    and its exception counts as retrieved, so asyncio does not log it a second time when it is collected.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Run `coro` as a task named `name` on the running loop, held until it is done."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task %r failed", task.get_name(), exc_info=exc)

    @property
    def active(self) -> frozenset[asyncio.Task[Any]]:
        """The tasks not yet done."""
        return frozenset(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        """Cancel every task and wait for each to end; calling it again (or spawning after it) is allowed.

        A task may start another while it unwinds, so this repeats until none is left. The task that calls
        it, if it is one of ours, is left alone: waiting for itself would never end.
        """
        current = asyncio.current_task()
        while pending := [task for task in self._tasks if task is not current]:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
