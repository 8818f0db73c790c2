"""The `speculative` request field on every generating route: checked in the protocol, handed to the engine."""

from __future__ import annotations

from typing import Any

import pytest

from nomoat.engine.types import Speculation

MODEL = "smollm2-135m"
MESSAGES = [{"role": "user", "content": "hi"}]
ROUTES = {
    "/v1/chat/completions": {"messages": MESSAGES, "max_tokens": 4},
    "/v1/completions": {"prompt": "hi", "max_tokens": 4},
    "/v1/responses": {"input": "hi", "max_output_tokens": 16},
    "/v1/messages": {"messages": MESSAGES, "max_tokens": 4},
}


def post(fake: Any, route: str, **fields: Any) -> Any:
    return fake.client.post(route, json={"model": MODEL, **ROUTES[route], **fields})


@pytest.mark.parametrize("route", ROUTES)
def test_the_field_reaches_the_engine_and_defaults_to_the_model(fake, route):
    assert post(fake, route, speculative={"type": "ngram", "n_max": 5}).status_code == 200
    assert fake.engine.submitted[-1].speculative == Speculation("ngram", 5)
    assert post(fake, route, speculative={"type": "none"}).status_code == 200
    assert fake.engine.submitted[-1].speculative == Speculation("none", None)
    assert post(fake, route).status_code == 200
    assert fake.engine.submitted[-1].speculative is None


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("value, param", [
    ({"type": "draft-model"}, "speculative.type"),
    ({"n_max": 4}, "speculative.type"),
    ({"type": "ngram", "n_max": 0}, "speculative.n_max"),
    ({"type": "ngram", "n_max": 1000}, "speculative.n_max"),
    ("ngram", "speculative"),
])
def test_a_bad_value_is_a_400_in_the_routes_own_shape(fake, route, value, param):
    r = post(fake, route, speculative=value)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    if route == "/v1/messages":
        assert error["type"] == "invalid_request_error" and param in error["message"], error
    else:
        assert error["param"] == param, error


def test_models_toml_sets_the_models_default(tmp_path):
    from nomoat import config

    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nname = "m"\nspeculative = "ngram"\nspeculative_n_max = 6\n')
    (model,) = config.parse_models(config.read_config_file(path), str(path), tmp_path).models
    assert model.engine_options()["speculative"] == "ngram" and model.engine_options()["speculative_n_max"] == 6
    path.write_text('[[models]]\nname = "m"\nspeculative = "lookahead"\n')
    with pytest.raises(config.ConfigError, match="speculative"):
        config.parse_models(config.read_config_file(path), str(path), tmp_path)
