"""Fixtures that build the real ASGI app in process around a registry of fake engines (no model, no subprocess)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator

import pytest
from starlette.testclient import TestClient

from nomoat import config
from nomoat.http.app import build_app
from nomoat.metrics import Metrics
from nomoat.registry import ModelRegistry, ServedModel
from nomoat.settings import Settings

from .fake_engine import FakeEmbedder, FakeEngine

MODEL = "smollm2-135m"


@dataclass
class FakeServer:
    client: TestClient
    registry: ModelRegistry
    settings: Settings

    @property
    def engine(self) -> FakeEngine:
        return self.registry.engines()[MODEL]  # type: ignore[return-value]


def fake_registry(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> ModelRegistry:
    def load_fake(self: ModelRegistry, model_config: Any) -> ServedModel:
        return ServedModel(model_config, FakeEngine(model_config.name), int(time.time()),  # type: ignore[arg-type]
                           embedder=FakeEmbedder())  # type: ignore[arg-type]

    monkeypatch.setattr(ModelRegistry, "_load_one", load_fake)
    registry = ModelRegistry(config.embedded_default(), settings, Metrics())
    registry.load()
    return registry


def start_fake(monkeypatch: pytest.MonkeyPatch, **settings: Any) -> Iterator[FakeServer]:
    built = Settings(**settings)
    registry = fake_registry(built, monkeypatch)
    with TestClient(build_app(built, registry), raise_server_exceptions=False) as client:
        yield FakeServer(client, registry, built)
    registry.close()


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    """The app with default settings over one fake engine serving `smollm2-135m`."""
    yield from start_fake(monkeypatch)


@pytest.fixture()
def fake_factory(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Build apps with other settings: `fake_factory(api_key="k", max_body_bytes=2048)`."""
    started: list[Iterator[FakeServer]] = []

    def start(**settings: Any) -> FakeServer:
        gen = start_fake(monkeypatch, **settings)
        started.append(gen)
        return next(gen)

    yield start
    for gen in started:
        for _ in gen:
            pass
