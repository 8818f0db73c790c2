"""Fixtures that build the real ASGI app in process around a registry of fake engines (no model, no subprocess)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from nomoat import config
from nomoat.http.app import build_app
from nomoat.metrics import Metrics
from nomoat.models_toml import ModelConfig, ModelsFile
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
        engine = self.registry.engines()[MODEL]
        assert isinstance(engine, FakeEngine), engine  # the registry types what it loads as the real Engine
        return engine


def fake_registry(settings: Settings, monkeypatch: pytest.MonkeyPatch, models: ModelsFile | None = None,
                  load_model: Callable[[ModelConfig], Any] | None = None, metrics: Metrics | None = None) -> ModelRegistry:
    """A registry of fake engines over `models` (default: the embedded model, loaded at startup)."""
    # The registry makes an embedder on a model's first embeddings request: a fake one here.
    monkeypatch.setattr("nomoat.registry.Embedder", lambda *args, **kwargs: FakeEmbedder())
    registry = ModelRegistry(models or config.embedded_default(), settings, metrics or Metrics(),
                             load_model=load_model or (lambda model: FakeEngine(model.name)))
    registry.load()
    return registry


def start_fake(monkeypatch: pytest.MonkeyPatch, models: ModelsFile | None = None,
               load_model: Callable[[ModelConfig], Any] | None = None, **settings: Any) -> Iterator[FakeServer]:
    with tempfile.TemporaryDirectory() as state:
        # State (stored responses) never goes to the user's own state dir, and no test sees another's.
        if "NOMOAT_STATE_DIR" not in os.environ:
            settings.setdefault("state_dir", Path(state))
        built = Settings(**settings)
        metrics = Metrics()
        registry = fake_registry(built, monkeypatch, models, load_model, metrics)
        with TestClient(build_app(built, registry, metrics), raise_server_exceptions=False) as client:
            yield FakeServer(client, registry, built)
        registry.close()


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    """The app with default settings over one fake engine serving `smollm2-135m`."""
    yield from start_fake(monkeypatch)


@pytest.fixture()
def fake_factory(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Build apps with other settings: `fake_factory(api_key="k", max_body_bytes=2048)`; `models=` (a ModelsFile)
    and `load_model=` (config -> engine) serve other models than the embedded one."""
    started: list[Iterator[FakeServer]] = []

    def start(**settings: Any) -> FakeServer:
        gen = start_fake(monkeypatch, **settings)
        started.append(gen)
        return next(gen)

    yield start
    for gen in started:
        for _ in gen:
            pass
