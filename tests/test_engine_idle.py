"""wait_idle(): a model's engine, embedder and child each wake their waiters the moment nothing is outstanding."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from support.fake_engine import FakeEmbedder, FakeEngine
from support.real_engine import spec

from nomoat.child import ChildModel
from nomoat.engine.engine import Engine
from nomoat.engine.in_flight import InFlight
from nomoat.engine.model import LoadedModel
from nomoat.engine.types import GenerationRequest, SamplingParams, TextPrompt
from nomoat.models_toml import ModelConfig
from nomoat.settings import Settings


def request(max_tokens: int = 4) -> GenerationRequest:
    return GenerationRequest(prompt=TextPrompt("Once upon a time"), sampling=SamplingParams(temperature=0),
                             max_tokens=max_tokens)


async def started(*waits: Coroutine[Any, Any, None]) -> list[asyncio.Task[None]]:
    """Tasks for `waits`, each run until it parks (or returns)."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    await asyncio.sleep(0)
    return tasks


def test_in_flight_returns_at_once_when_idle_and_wakes_every_waiter_when_the_count_reaches_zero() -> None:
    async def scenario() -> None:
        count = InFlight()
        await asyncio.wait_for(count.wait_idle(), 1)  # nothing in flight: no wait at all
        count.count += 2
        waiters = await started(count.wait_idle(), count.wait_idle(), count.wait_idle())
        count.count -= 1
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiters), "one request is still in flight"
        count.count -= 1
        await asyncio.wait_for(asyncio.gather(*waiters), 1)
        assert not count._waiters, "finished waiters leave nothing behind"

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_the_others_waiting() -> None:
    async def scenario() -> None:
        count = InFlight()
        count.count += 1
        gone, staying = await started(count.wait_idle(), count.wait_idle())
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert not staying.done()
        count.count -= 1
        await asyncio.wait_for(staying, 1)
        assert not count._waiters

    asyncio.run(scenario())


def test_the_fake_engine_is_idle_once_its_generations_end() -> None:
    async def scenario() -> None:
        engine = FakeEngine("m")
        await asyncio.wait_for(engine.wait_idle(), 1)
        gens = [await engine.submit(request()) for _ in range(2)]
        (waiter,) = await started(engine.wait_idle())
        assert not waiter.done()
        for gen in gens:
            _ = [event async for event in gen]
        await asyncio.wait_for(waiter, 5)
        assert engine.outstanding == 0
        await asyncio.wait_for(FakeEmbedder().wait_idle(), 1)

    asyncio.run(scenario())


def test_a_child_model_is_idle_once_its_forwarded_requests_end(tmp_path: Path) -> None:
    child = ChildModel(ModelConfig(name="split", path="/m.gguf", rpc=["127.0.0.1:9"]), [], [],
                       Settings(state_dir=tmp_path), on_exit=lambda child, reason: None)

    async def scenario() -> None:
        await asyncio.wait_for(child.wait_idle(), 1)
        child.outstanding += 1  # as http/forward.py counts a request it forwards
        (waiter,) = await started(child.wait_idle())
        assert not waiter.done()
        child.outstanding -= 1
        await asyncio.wait_for(waiter, 1)

    try:
        asyncio.run(scenario())
    finally:
        child.close()


def test_the_engine_wakes_idle_waiters_when_its_last_generation_retires() -> None:
    model = LoadedModel(spec(name="m", n_ctx=512, n_batch=256))
    engine = Engine(model, queue_size=4)

    async def scenario() -> None:
        await asyncio.wait_for(engine.wait_idle(), 1)
        gens = [await engine.submit(request()) for _ in range(3)]  # parallel=2: one of them queues
        waiters = await started(engine.wait_idle(), engine.wait_idle())
        assert not any(w.done() for w in waiters)
        for gen in gens:
            events = [event async for event in gen]
            assert events[-1].finish_reason == "length"
        await asyncio.wait_for(asyncio.gather(*waiters), 60)
        assert engine.outstanding == 0

    try:
        asyncio.run(scenario())
    finally:
        engine.close()
