"""The real engine in process, without HTTP: load the test model (support/model.py) with given settings, generate greedily."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nomoat.engine.engine import Engine
from nomoat.engine.model import LoadedModel, ModelSpec, install_llama_logging
from nomoat.engine.types import ChatPrompt, GenerationRequest, SamplingParams, TokenEvent

from .model import q8_model_path
from .process import NO_EOS, THREADS

GREEDY_NO_EOS = SamplingParams(temperature=0.0, logit_bias={int(t): b for t, b in NO_EOS.items()})


def spec(**fields: Any) -> ModelSpec:
    """The test model's spec: small contexts, this worker's threads, the rest as given."""
    base: dict[str, Any] = {"name": "smollm2-135m", "path": q8_model_path(), "n_ctx": 1024, "n_batch": 512,
                            "parallel": 2, "n_threads": THREADS}
    return ModelSpec(**{**base, **fields})


install_llama_logging()  # llama.cpp's chatter into logging (captured by pytest), not onto stderr


@contextmanager
def engine(prefix_cache: bool = True, **fields: Any) -> Iterator[Engine]:
    eng = Engine(LoadedModel(spec(**fields)), queue_size=8, prefix_cache=prefix_cache)
    try:
        yield eng
    finally:
        eng.close()


def request(text: str, max_tokens: int = 16, **fields: Any) -> GenerationRequest:
    """A chat request, greedy unless `sampling` says otherwise."""
    sampling = fields.pop("sampling", SamplingParams(temperature=0.0))
    return GenerationRequest(prompt=ChatPrompt([{"role": "user", "content": text}]), sampling=sampling,
                             max_tokens=max_tokens, **fields)


async def _collect(eng: Engine, req: GenerationRequest) -> list[TokenEvent]:
    return [event async for event in await eng.submit(req)]


def run(eng: Engine, *requests: GenerationRequest) -> list[list[TokenEvent]]:
    """Every request submitted at once (so they share steps), each one's events."""

    async def main() -> list[list[TokenEvent]]:
        return list(await asyncio.gather(*(_collect(eng, r) for r in requests)))

    return asyncio.run(main())


def text(events: list[TokenEvent]) -> str:
    assert events and events[-1].error is None, events[-1:]
    return "".join(e.text for e in events)


def tokens(events: list[TokenEvent]) -> list[int]:
    return [e.token_id for e in events if e.token_id is not None]


def with_fields(req: GenerationRequest, **fields: Any) -> GenerationRequest:
    return dataclasses.replace(req, **fields)
