"""A model's worker thread: the one thread that calls llama.cpp for it, woken by a condition, fed jobs."""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import ShuttingDown

T = TypeVar("T")
Job = Callable[[], None]


class Worker:
    """One thread that sleeps on `cv` until there is work, then runs its owner's `turn` with the lock released.

    Engine and Embedder each own one. `cv` also guards the owner's own queues: whoever moves work
    between them holds it only for the move, never across a llama.cpp call, so the event loop,
    which takes it to submit and cancel, waits only for deque moves. `has_work` (read under the
    lock) says whether the owner has work beyond the jobs handed in by `call`; `turn(jobs)` gets
    those jobs and runs them when it sees fit. Once stopped, the loop ends: `on_stop` runs on
    the thread, then the jobs still queued, so no caller of `call` is left hanging.
    """

    def __init__(self, name: str, turn: Callable[[list[Job]], None], *, has_work: Callable[[], bool] = lambda: False,
                 on_stop: Callable[[], None] = lambda: None) -> None:
        self.cv = threading.Condition()
        self.stopping = False
        self._turn, self._has_work, self._on_stop = turn, has_work, on_stop
        self._jobs: collections.deque[Job] = collections.deque()
        self._calls: set[concurrent.futures.Future[Any]] = set()  # queued or running; under cv, for abort()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def call(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run `fn` on the worker between two turns; await it with asyncio.wrap_future. ShuttingDown once stopped."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def job() -> None:
            with self.cv:  # a call is either started here or ended by abort(), never both
                if future.done() or not future.set_running_or_notify_cancel():
                    self._calls.discard(future)
                    return
            try:
                settle(future, result=fn())
            except BaseException as exc:  # handed to whoever waits on the future
                settle(future, exception=exc)
            finally:
                with self.cv:
                    self._calls.discard(future)

        with self.cv:
            if self.stopping:
                raise ShuttingDown()
            self._jobs.append(job)
            self._calls.add(future)
            self.cv.notify()
        return future

    def wake(self) -> None:
        with self.cv:
            self.cv.notify()

    def stop(self) -> None:
        """End the loop after the turn it is in; takes nothing new from `call`. Safe from any thread."""
        with self.cv:
            self.stopping = True
            self.cv.notify()

    def abort(self, error: Callable[[], BaseException]) -> None:
        """Stop, and end every queued and running `call` now with `error()`, even one inside a long llama.cpp call."""
        with self.cv:
            self.stop()
            for future in self._calls:
                settle(future, exception=error())

    def close(self, timeout: float) -> bool:
        """Stop and wait up to `timeout` seconds for the thread; False when it is still inside a call."""
        self.stop()
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def _run(self) -> None:
        while True:
            with self.cv:
                while not (self.stopping or self._jobs or self._has_work()):
                    self.cv.wait()
                if self.stopping:
                    break
                jobs = list(self._jobs)
                self._jobs.clear()
            self._turn(jobs)
        self._on_stop()
        with self.cv:
            jobs = list(self._jobs)
            self._jobs.clear()
        for job in jobs:
            job()


def settle(future: concurrent.futures.Future[T], *, result: T | None = None,
           exception: BaseException | None = None) -> None:
    """Complete `future` unless abort() (or the worker) already did: the first answer wins."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)  # type: ignore[arg-type]  # None only with an exception
    except concurrent.futures.InvalidStateError:
        pass
