"""Per-model sampling defaults: a request's own value, then models.toml's, then the GGUF's, then the server's,
on every protocol; shown in /v1/models/{id}; a change of them alone keeps the model open on reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import httpx
import pytest
from conftest import TEST_THREADS, model_path
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata
from support.fake_engine import FakeEngine
from support.inprocess import MODEL, FakeServer

from nomoat import config
from nomoat.engine.sampling_defaults import gguf_sampling
from nomoat.engine.types import GenerationRequest
from nomoat.models_toml import ModelConfig, ModelsFile
from nomoat.residency.reload import needs_reload

GGUF = {"temperature": 0.6, "top_k": 20}  # as a file's general.sampling.temp and .top_k
TOML = {"temperature": 0.3, "max_tokens": 7}


@pytest.fixture()
def server(fake_factory: Any) -> FakeServer:
    base = config.embedded_default().models[0]
    models = ModelsFile(models=[ModelConfig(**{**base.model_dump(), "aliases": ["small"], **TOML})])
    started: FakeServer = fake_factory(models=models, load_model=lambda c: FakeEngine(c.name, gguf_sampling=dict(GGUF)))
    return started


def _last(server: FakeServer) -> GenerationRequest:
    return server.engine.submitted[-1]


def _send(server: FakeServer, api: str, fields: dict[str, Any]) -> GenerationRequest:
    messages = [{"role": "user", "content": "hi"}]
    if api == "chat":
        response = server.client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, **fields})
    elif api == "completions":
        response = server.client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", **fields})
    elif api == "responses":
        response = server.client.post("/v1/responses", json={"model": MODEL, "input": "hi", "store": False, **fields})
    else:
        response = server.client.post("/v1/messages", headers={"anthropic-version": "2023-06-01"},
                                      json={"model": MODEL, "messages": messages, "max_tokens": 5, **fields})
    assert response.status_code == 200, response.text
    return _last(server)


@pytest.mark.parametrize("api", ["chat", "completions", "responses", "anthropic"])
def test_absent_fields_take_the_models_defaults_in_order(server: FakeServer, api: str) -> None:
    sampling = _send(server, api, {}).sampling
    assert sampling.temperature == 0.3  # models.toml over the GGUF's 0.6
    assert sampling.top_k == 20  # the GGUF's
    assert (sampling.top_p, sampling.min_p, sampling.repeat_penalty) == (0.95, 0.05, 1.0)  # llama.cpp server's


@pytest.mark.parametrize("api", ["chat", "completions", "responses", "anthropic"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_requests_own_values_always_win(server: FakeServer, api: str, temperature: float) -> None:
    sampling = _send(server, api, {"temperature": temperature, "top_k": 0, "top_p": 1.0}).sampling
    assert (sampling.temperature, sampling.top_k, sampling.top_p) == (temperature, 0, 1.0)


@pytest.mark.parametrize(("api", "field"), [("chat", "max_tokens"), ("chat", "max_completion_tokens"),
                                            ("completions", "max_tokens"), ("responses", "max_output_tokens")])
def test_max_tokens_default_from_models_toml(server: FakeServer, api: str, field: str) -> None:
    assert _send(server, api, {}).max_tokens == 7
    assert _send(server, api, {field: 3}).max_tokens == 3


@pytest.mark.parametrize("model_id", [MODEL, "small"])
def test_the_model_object_shows_each_default_and_its_source(server: FakeServer, model_id: str) -> None:
    card = server.client.get(f"/v1/models/{model_id}").json()
    assert card["sampling_defaults"] == {
        "temperature": {"value": 0.3, "source": "models.toml"}, "top_p": {"value": 0.95, "source": "server"},
        "top_k": {"value": 20, "source": "gguf"}, "min_p": {"value": 0.05, "source": "server"},
        "repeat_penalty": {"value": 1.0, "source": "server"}, "max_tokens": {"value": 7, "source": "models.toml"},
    }


def test_an_unloaded_model_shows_the_files_defaults(fake_factory: Any) -> None:
    base = config.embedded_default().models[0]
    models = ModelsFile(models=[ModelConfig(**{**base.model_dump(), "load": "on_demand", "top_p": 0.9})])
    card = fake_factory(models=models).client.get(f"/v1/models/{MODEL}").json()
    assert card["status"] == "unloaded"
    assert card["sampling_defaults"]["top_p"] == {"value": 0.9, "source": "models.toml"}
    assert card["sampling_defaults"]["temperature"] == {"value": 0.8, "source": "server"}  # the file sets none


def test_a_change_of_sampling_defaults_alone_keeps_the_model_open() -> None:
    old = config.embedded_default().models[0]
    assert not needs_reload(old, old.model_copy(update={"temperature": 0.2, "top_k": 5, "max_tokens": 64}))
    assert needs_reload(old, old.model_copy(update={"n_ctx": 1024}))


def test_a_files_values_outside_the_protocols_range_are_ignored() -> None:
    keys = {"general.sampling.temp": "0.700000", "general.sampling.top_p": "0", "general.sampling.top_k": "nan",
            "general.sampling.min_p": 7.0, "general.sampling.penalty_repeat": "1.1"}
    assert gguf_sampling(keys.get) == {"temperature": 0.7, "repeat_penalty": 1.1}


@pytest.mark.parametrize("bad", [{"temperature": 3}, {"top_p": 0}, {"top_k": -1}, {"max_tokens": 0}])
def test_models_toml_refuses_values_a_request_could_not_send(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        ModelConfig(name="m", **bad)


@pytest.fixture(scope="module")
def model_with_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test model copied with `general.sampling.temp = 0.7`, as llama.cpp's converter writes it."""
    source = model_path()
    path = tmp_path_factory.mktemp("sampling") / "with-temp.gguf"
    reader = gguf.GGUFReader(source)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert arch is not None
    writer = gguf.GGUFWriter(path, arch.contents(), endianess=reader.endianess)
    temp = MetadataDetails(gguf.GGUFValueType.FLOAT32, 0.7)
    copy_with_new_metadata(reader, writer, {gguf.Keys.General.SAMPLING_TEMP: temp}, [])
    return path


def test_a_gguf_sampling_key_is_the_models_default_loaded_or_not(start_server: Any, model_with_temp: Path) -> None:
    entry = f'path = "{model_with_temp}"\nn_ctx = 256\nparallel = 1\nn_threads = {TEST_THREADS}\n'
    srv = start_server(f'[[models]]\nname = "loaded"\naliases = ["alias"]\nload = "startup"\ntop_k = 12\n{entry}'
                       f'[[models]]\nname = "unloaded"\n{entry}')
    for model_id in ("loaded", "alias", "unloaded"):  # llama.cpp's metadata, or the header read without a load
        card = httpx.get(f"{srv.base_url}/v1/models/{model_id}").json()
        assert card["sampling_defaults"]["temperature"] == {"value": 0.7, "source": "gguf"}, card
        assert card["sampling_defaults"]["top_p"] == {"value": 0.95, "source": "server"}
    assert httpx.get(f"{srv.base_url}/v1/models/unloaded").json()["status"] == "unloaded"
    assert httpx.get(f"{srv.base_url}/v1/models/loaded").json()["sampling_defaults"]["top_k"] == {
        "value": 12, "source": "models.toml"}
