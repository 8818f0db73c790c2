"""engine/worker.py: the one thread a model's engine and embedder each run on, and the calls handed to it."""

from __future__ import annotations

import collections
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from nomoat.engine.adapters import LoraAdapter, Unloads
from nomoat.engine.engine import Engine
from nomoat.engine.errors import ShuttingDown
from nomoat.engine.types import AdapterSet, AppliedAdapter, GenerationRequest, SamplingParams, TextPrompt
from nomoat.engine.worker import Job, Worker

WAIT = 60  # a fail-safe against a hang, never reached when the worker works


def run_all(jobs: list[Job]) -> None:
    for job in jobs:
        job()


def test_calls_run_on_the_named_thread_in_order() -> None:
    worker = Worker("engine-test", run_all)
    try:
        futures = [worker.call(lambda i=i: (i, threading.current_thread().name)) for i in range(3)]
        assert [f.result(WAIT) for f in futures] == [(0, "engine-test"), (1, "engine-test"), (2, "engine-test")]
        failing = worker.call(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failing.result(WAIT)
        assert worker.call(lambda: "alive").result(WAIT) == "alive"  # a failed call leaves the worker serving
    finally:
        assert worker.close(WAIT)


def test_abort_ends_running_and_queued_calls_at_once_and_refuses_new_ones() -> None:
    worker = Worker("embed-test", run_all)
    entered, release = threading.Event(), threading.Event()
    ran: list[str] = []
    running = worker.call(lambda: (entered.set(), release.wait(WAIT)))
    assert entered.wait(WAIT)
    queued = worker.call(lambda: ran.append("queued"))
    worker.abort(lambda: ShuttingDown("grace period over"))
    for future in (running, queued):
        with pytest.raises(ShuttingDown, match="grace period over"):
            future.result(0)  # already ended, while the running call is still inside its work
    with pytest.raises(ShuttingDown):
        worker.call(lambda: None)
    release.set()
    assert worker.close(WAIT)
    assert ran == [], "a call ended by abort never runs"


def test_a_stop_runs_on_stop_then_the_calls_still_queued() -> None:
    order: list[str] = []
    entered, release = threading.Event(), threading.Event()
    worker = Worker("engine-test", run_all, on_stop=lambda: order.append("on_stop"))
    worker.call(lambda: (entered.set(), release.wait(WAIT)))
    assert entered.wait(WAIT)
    queued = worker.call(lambda: order.append("queued"))
    worker.stop()
    release.set()
    assert worker.close(WAIT)
    queued.result(0)
    assert order == ["on_stop", "queued"]


def test_the_owner_work_wakes_the_worker() -> None:
    pending: list[int] = []
    done = threading.Event()

    def turn(jobs: list[Job]) -> None:
        with worker.cv:
            pending.clear()
        done.set()

    worker = Worker("engine-test", turn, has_work=lambda: bool(pending))
    try:
        with worker.cv:
            pending.append(1)
        worker.wake()
        assert done.wait(WAIT)
    finally:
        assert worker.close(WAIT)


def test_an_adapter_held_by_a_request_being_tokenized_is_not_work() -> None:
    """The engine's worker sleeps while the only adapter marked for unloading is used by a request still being
    tokenized (it spun on it before: `_has_work` counted any adapter waiting to be freed); it is work once freed."""
    adapter = LoraAdapter("a", Path("a.gguf"), Path("a.gguf"), "0" * 64)
    request = GenerationRequest(prompt=TextPrompt("hi"), sampling=SamplingParams(),
                                adapters=AdapterSet((AppliedAdapter("a", 1.0, adapter.content_hash, adapter),)))
    engine = object.__new__(Engine)  # only the queues `_has_work` reads: no model, no thread
    engine._inbox, engine._active, engine._unloads = collections.deque(), [], Unloads()
    engine._unloads.marked.append(adapter)
    engine._admission = SimpleNamespace(admitting={id(request): request})  # type: ignore[assignment]
    assert not engine._has_work()
    engine._admission.admitting.clear()
    assert engine._has_work()
