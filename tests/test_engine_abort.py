"""abort(): when a shutdown's grace period is over, every open stream and request ends at once with ShuttingDown."""

from __future__ import annotations

import asyncio
import threading

import pytest
from support.real_engine import spec

from nomoat.engine.embedder import Embedder
from nomoat.engine.engine import Engine
from nomoat.engine.errors import ShuttingDown
from nomoat.engine.model import LoadedModel
from nomoat.engine.types import GenerationRequest, SamplingParams, TextPrompt

# The blocked worker gives up waiting for the test after this long: a fail-safe, never reached when abort works.
FAIL_SAFE_SECONDS = 300  # a guard against a hang; CI runs on a loaded machine


@pytest.fixture()
def model():
    loaded = LoadedModel(spec(name="m", n_ctx=512, n_batch=256))
    yield loaded
    loaded.close()


def request() -> GenerationRequest:
    return GenerationRequest(prompt=TextPrompt("Once upon a time"), sampling=SamplingParams(temperature=0), max_tokens=400)


@pytest.mark.parametrize("caller", ["event loop", "other thread"])
def test_abort_ends_running_and_queued_generations_while_the_worker_is_busy(model, caller):
    engine = Engine(model, queue_size=4)
    busy, release = threading.Event(), threading.Event()

    def occupy_worker() -> None:
        busy.set()
        release.wait(FAIL_SAFE_SECONDS)

    async def scenario() -> None:
        running = [await engine.submit(request()) for _ in range(2)]
        for gen in running:
            assert not (await anext(gen)).final
        queued = await engine.submit(request())  # parallel=2: this one waits for a slot
        blocked = asyncio.wrap_future(engine.call(occupy_worker))  # the worker is inside a long call
        await asyncio.to_thread(busy.wait, FAIL_SAFE_SECONDS)
        if caller == "event loop":
            engine.abort("grace period over")
        else:
            await asyncio.to_thread(engine.abort, "grace period over")
        for gen in [*running, queued]:
            events = [event async for event in gen]
            assert isinstance(events[-1].error, ShuttingDown), events[-1]
            assert str(events[-1].error) == "grace period over"
        assert not release.is_set()  # every stream ended while the worker was still busy
        assert engine.outstanding == 0
        with pytest.raises(ShuttingDown):
            await engine.submit(request())
        release.set()
        await blocked

    try:
        asyncio.run(asyncio.wait_for(scenario(), 900))
    finally:
        release.set()
        engine.close()
    assert not engine._worker.thread.is_alive()


def test_embedder_abort_fails_running_and_queued_requests_at_once(model):
    embedder = Embedder(model, queue_size=4)
    entered, release = threading.Event(), threading.Event()
    real_create = embedder._create_context

    def slow_create() -> None:
        entered.set()
        release.wait(FAIL_SAFE_SECONDS)
        real_create()

    embedder._create_context = slow_create

    async def scenario() -> None:
        running = asyncio.create_task(embedder.embed([TextPrompt("a cat")]))
        await asyncio.to_thread(entered.wait, FAIL_SAFE_SECONDS)
        queued = asyncio.create_task(embedder.embed([TextPrompt("a dog")]))
        while embedder.outstanding < 2:  # noqa: ASYNC110  (the embedder exposes a count, not an event)
            await asyncio.sleep(0.01)
        embedder.abort("grace period over")
        for task in (running, queued):
            with pytest.raises(ShuttingDown, match="grace period over"):
                await task
        assert not release.is_set()
        with pytest.raises(ShuttingDown):
            await embedder.embed([TextPrompt("a bird")])
        release.set()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 900))
    finally:
        release.set()
        assert embedder.close()
