"""Fixtures that build the real ASGI app in process around a registry of fake engines (no model, no subprocess)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.testclient import TestClient

from nomoat import config
from nomoat.http.app import build_app
from nomoat.metrics import Metrics
from nomoat.registry import ModelRegistry
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
    # The registry makes an embedder on a model's first embeddings request: a fake one here.
    monkeypatch.setattr("nomoat.registry.Embedder", lambda *args, **kwargs: FakeEmbedder())
    registry = ModelRegistry(config.embedded_default(), settings, Metrics(),
                             load_model=lambda model: FakeEngine(model.name))  # type: ignore[arg-type,return-value]
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
