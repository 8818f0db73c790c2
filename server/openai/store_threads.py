"""The Responses store's executor: a few daemon threads that run its SQLite calls in order of arrival.

Not a ThreadPoolExecutor: its threads are not daemons, and only the interpreter's own exit hook ends
them, so a process that ends otherwise (a forked test server's os._exit after joining its threads)
would wait on them forever. Daemon threads need no shutdown: the Daemon drains requests before the
process exits, and SQLite's journal makes a write cut short by the exit roll back, never half-written.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

_Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None  # None: a thread's signal to end

class StoreThreads(Executor):
    """`workers` daemon threads, started on the first call, fed from one unbounded FIFO queue (what waits in
    it is bounded by the requests in flight; each call gives up past its own deadline). The threads end once
    the executor is garbage (a test's app), as a ThreadPoolExecutor's do."""

    def __init__(self, workers: int, name: str) -> None:
        self._workers = workers
        self._name = name
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._started = False
        self._start_lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._queue.put((future, (lambda: fn(*args, **kwargs)) if kwargs else fn, args if not kwargs else ()))
        if not self._started:
            self._start()
        return future

    def _start(self) -> None:
        with self._start_lock:
            if self._started:
                return
            for i in range(self._workers):
                # The thread holds the queue, never the executor, so the executor can become garbage.
                threading.Thread(target=_work, args=(self._queue,), name=f"{self._name}-{i}", daemon=True).start()
            weakref.finalize(self, _end, self._queue, self._workers)
            self._started = True


def _end(jobs: queue.SimpleQueue[_Job], workers: int) -> None:
    for _ in range(workers):
        jobs.put(None)


def _work(jobs: queue.SimpleQueue[_Job]) -> None:
    while True:
        job = jobs.get()
        if job is None:
            return
        future, fn, args = job
        if not future.set_running_or_notify_cancel():
            continue
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the caller, as ThreadPoolExecutor does
            future.set_exception(exc)
        else:
            future.set_result(result)
        del job, future, fn, args  # nothing of a finished call outlives it while the thread waits
