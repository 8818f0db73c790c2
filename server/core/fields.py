"""The request fields every wire protocol shares: lenient parsing, nomoat's own fields (`keep_alive`, `lora`,
`speculative`) and `parse`, which turns a validation failure into a 400 naming its field."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..engine.types import Speculation
from ..errors import InvalidRequestError
from ..quantities import parse_duration


class Lenient(BaseModel):
    # Clients add fields every release (store, metadata, reasoning_effort...): ignore, never 422.
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        # OpenAI's schema makes nearly every field nullable and clients send `"n": null` for
        # "not set": null takes the default (a required field is then reported missing).
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class KeepAlive(Lenient):
    """Ollama's `keep_alive`, on every request that loads a model: how long the model stays loaded once idle
    ("5m", "1h30m", seconds, 0 to unload at once, negative for ever; quantities.parse_duration refuses the
    rest with a 400 naming the value). Read as seconds (math.inf: for ever)."""

    keep_alive: float | None = None

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return parse_duration(value)
        raise ValueError("keep_alive must be a duration: seconds, or a string like '5m'")


class LoraRef(Lenient):
    """One entry of the non-OpenAI `lora` field: an adapter by name, at a scale."""

    name: str = Field(min_length=1)
    scale: float = Field(1.0, ge=-10.0, le=10.0)


class SpeculativeOptions(Lenient):
    """nomoat: the non-OpenAI `speculative` field, e.g. {"type": "ngram", "n_max": 8}; left out, the model's
    `speculative` setting applies. Drafts are verified by the model itself, so the output is the same.
    `draft` needs a model with a `draft_model` (otherwise the engine answers 400)."""

    type: Literal["ngram", "draft", "none"]
    n_max: int | None = Field(None, ge=1, le=64)


def speculation(options: SpeculativeOptions | None) -> Speculation | None:
    """The engine's Speculation for a request's `speculative` field (None: the model's default)."""
    return None if options is None else Speculation(options.type, options.n_max)


class ModelRef(KeepAlive):
    """The body of the lifecycle routes (POST /models/load, /models/unload): a model id and its keep_alive."""

    model: str = Field(min_length=1, max_length=200)


def parse(model: type[BaseModel], body: Any) -> Any:
    """Validate a JSON body; the first problem becomes a 400 naming its field."""
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object", param=None)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = _param_path(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = f"'{param}' is a required property"
        elif param:
            msg = f"Invalid value for '{param}': {msg}"
        code = "missing_required_parameter" if err["type"] == "missing" else "invalid_value"
        raise InvalidRequestError(msg, param=param, code=code) from None


_TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list", "none"}


def _param_path(loc: tuple[Any, ...]) -> str:
    """`messages[0].content` from pydantic's location, leaving out union branch names."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in _TYPE_NAMES and part.replace("_", "").isalnum() and not part[:1].isupper():
            out += ("." if out else "") + part
    return out
