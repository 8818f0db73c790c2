"""The engine's worker thread outlives what fails on it (a request that cannot start, an adapter llama.cpp refuses)."""

from __future__ import annotations

import asyncio

import pytest
from lora_factory import DIMS, write_lora
from support.real_engine import spec

from nomoat.engine.engine import Engine
from nomoat.engine.errors import AdapterRejected
from nomoat.engine.model import LoadedModel
from nomoat.engine.types import GenerationRequest, SamplingParams, TextPrompt


@pytest.fixture(scope="module")
def engine():
    model = LoadedModel(spec(name="m", n_ctx=512))
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
    assert engine._worker.thread.is_alive()
    assert sorted(slot for context in engine._contexts for slot in context.free_ids) == [0, 1]


def test_an_adapter_llama_cpp_refuses_is_rejected_and_the_engine_serves_on(engine, tmp_path):
    wrong_width = {module: (n_in + 8, n_out) for module, (n_in, n_out) in DIMS.items()}  # not this model's shapes
    path = write_lora(tmp_path / "wrong.gguf", seed=1, dims=wrong_width)

    async def load_then_serve():
        with pytest.raises(AdapterRejected, match="refused the adapter"):
            await asyncio.wrap_future(engine.load_adapter("wrong", path, path, "0" * 64))
        ok = await run(engine, "Hello")
        assert ok[-1].finish_reason == "length"

    asyncio.run(asyncio.wait_for(load_then_serve(), 60))
