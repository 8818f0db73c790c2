"""The engine never makes the event loop wait on llama.cpp: opening a context blocks no submit and no cancel."""

from __future__ import annotations

import asyncio
import hashlib
import threading

import pytest
from lora_factory import write_lora
from support.real_engine import spec

from nomoat.engine.engine import Engine
from nomoat.engine.model import LoadedModel
from nomoat.engine.types import NO_ADAPTERS, AdapterSet, AppliedAdapter, GenerationRequest, SamplingParams, TextPrompt

# How long the blocked context creation waits for the test before it gives up on its own. Only a
# fail-safe: the test passes when submit and cancel returned while the creation was still blocked.
FAIL_SAFE_SECONDS = 300  # a guard against a hang; CI runs on a loaded machine


@pytest.fixture()
def model():
    loaded = LoadedModel(spec(name="m", n_ctx=256, n_batch=256, adapter_contexts=2))
    yield loaded
    loaded.close()


async def adapter_set(engine: Engine, path, name: str) -> AdapterSet:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    lora = await asyncio.wrap_future(engine.load_adapter(name, path, path, digest))
    return AdapterSet((AppliedAdapter(name=name, scale=1.0, content_hash=digest, handle=lora),))


def request(adapters: AdapterSet = NO_ADAPTERS, max_tokens: int = 4) -> GenerationRequest:
    return GenerationRequest(prompt=TextPrompt("Once upon a time"), sampling=SamplingParams(temperature=0),
                             max_tokens=max_tokens, adapters=adapters)


def test_opening_a_context_blocks_neither_submit_nor_cancel(model, monkeypatch, tmp_path):
    entered, release, gave_up = threading.Event(), threading.Event(), threading.Event()
    real_new_context = model.new_context

    def blocked_new_context():
        entered.set()
        if not release.wait(FAIL_SAFE_SECONDS):
            gave_up.set()
        return real_new_context()

    monkeypatch.setattr(model, "new_context", blocked_new_context)
    engine = Engine(model, queue_size=8)

    async def scenario() -> None:
        set_a = await adapter_set(engine, write_lora(tmp_path / "a.gguf", seed=1), "a")
        set_b = await adapter_set(engine, write_lora(tmp_path / "b.gguf", seed=2), "b")
        running = await engine.submit(request(set_a, max_tokens=200))
        first = await anext(running)
        assert first.error is None and not first.final
        opening = await engine.submit(request(set_b))  # context 0 runs set a: set b needs a second one
        await asyncio.to_thread(entered.wait, FAIL_SAFE_SECONDS)
        assert entered.is_set()
        # The worker is inside llama.cpp creating the context; the loop still admits and cancels.
        queued = await asyncio.wait_for(engine.submit(request()), 120)
        running.cancel()
        queued.cancel()
        assert not gave_up.is_set() and not release.is_set()
        release.set()
        rest = [event async for event in running]
        assert rest[-1].finish_reason == "cancelled"
        opened = [event async for event in opening]
        assert opened[-1].finish_reason == "length" and opened[-1].error is None
        assert [event async for event in queued][-1].final
        assert engine.stats.contexts == 2

    try:
        asyncio.run(asyncio.wait_for(scenario(), 900))
    finally:
        release.set()
        engine.close()
