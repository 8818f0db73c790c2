"""The engine's worker thread outlives a request that fails to start: that request errors, others are served."""

from __future__ import annotations

import asyncio

import pytest

from nomoat.config import embedded_model_path
from nomoat.engine.model import LoadedModel, ModelSpec
from nomoat.engine.engine import Engine
from nomoat.engine.types import GenerationRequest, SamplingParams, TextPrompt


@pytest.fixture(scope="module")
def engine():
    model = LoadedModel(ModelSpec(name="m", path=embedded_model_path(), n_ctx=512, n_batch=512, parallel=2, n_threads=2))
    eng = Engine(model, queue_size=4)
    yield eng
    eng.close()
    model.close()


async def run(engine: Engine, text: str) -> list:
    gen = await engine.submit(GenerationRequest(prompt=TextPrompt(text), sampling=SamplingParams(temperature=0), max_tokens=4))
    return [event async for event in gen]


def test_a_sequence_that_cannot_start_fails_alone(engine, monkeypatch):
    real_start = Engine._start
    calls = []

    def start_once_broken(self, seq):
        calls.append(seq)
        if len(calls) == 1:
            real_start(self, seq)  # take a slot, then fail half way: the slot must come back
            self._active.remove(seq)
            raise RuntimeError("boom")
        return real_start(self, seq)

    monkeypatch.setattr(Engine, "_start", start_once_broken)

    async def both():
        failed = await run(engine, "Hello")
        assert failed[-1].error is not None and "boom" in str(failed[-1].error)
        for _ in range(3):  # more requests than slots: a leaked slot would show
            ok = await run(engine, "Hello")
            assert ok[-1].finish_reason == "length" and ok[-1].error is None

    asyncio.run(asyncio.wait_for(both(), 60))
    assert engine._thread.is_alive()
    assert sorted(lane_id for lane in engine._lanes for lane_id in lane.free_ids) == [0, 1]
