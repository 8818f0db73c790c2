"""models.toml's schema: the models, adapters and stacks to serve, each checked once into a typed object.

Reading the file, the environment and the command line into them is config.py's work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from .engine.chat_template import ChatTemplate
from .engine.errors import TemplateError
from .quantities import parse_duration, parse_size

EMBEDDED = "embedded:smollm2-135m"
HF_PREFIX = "hf:"  # a model on the Hugging Face Hub: hf:OWNER/REPO[:QUANT], fetched into its cache


def _check_id(value: str) -> str:
    if any(c.isspace() for c in value):
        raise ValueError(f"model ids may not contain whitespace: {value!r}")
    return value


KVCacheType = Literal["f16", "q8_0", "q4_0"]
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "max_tokens")
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
    n_gpu_layers: Annotated[int, Field(ge=-1)] | Literal["auto"] = Field(
        "auto",
        description=(
            "Layers offloaded to the GPU: `auto` as many as fit its free memory (none in a build without a GPU "
            "backend), 0 none, -1 all."
        ),
    )
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
    prompt_cache_ram: int | str = Field(
        "256MiB",
        description=(
            "RAM for KV states of prompts whose slot went to another prompt, restored when they return "
            "(docs/prompt-cache.md); counted in memory_budget with the model. 0 = off."
        ),
    )
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
    mmproj: str | None = Field(
        None,
        description=(
            "A vision projector GGUF (llama.cpp's mmproj file) made for this model: chat messages may then hold "
            "images (docs/images.md). A file, relative to models.toml."
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
        if self.rpc and ("n_gpu_layers" not in self.model_fields_set or self.n_gpu_layers == "auto"):
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
                "draft_model": Path(self.draft_model) if self.draft_model else None,
                "mmproj": Path(self.mmproj) if self.mmproj else None}
    # Sampling defaults: what a request that leaves the field out gets. Flat keys like every other knob here (and
    # like Ollama's PARAMETER lines), each named as the request field it fills in; None: the GGUF's
    # general.sampling.* value, else llama.cpp's server default (engine/sampling_defaults.py).
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Default temperature (GGUF's, else 0.8).")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Default top_p (GGUF's, else 0.95).")
    top_k: int | None = Field(None, ge=0, description="Default top_k, 0 = off (GGUF's, else 40).")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="Default min_p (GGUF's, else 0.05).")
    repeat_penalty: float | None = Field(None, gt=0.0, le=10.0, description="Default repeat_penalty (GGUF's, else 1.0).")
    max_tokens: int | None = Field(
        None, ge=1, description="Default completion tokens (capped by max_tokens_limit; default: max_tokens_limit).",
    )

    def sampling_overrides(self) -> dict[str, float | int | None]:
        """The sampling defaults models.toml sets (None: unset), by their request field names."""
        return {name: getattr(self, name) for name in SAMPLING_KEYS}

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

    @field_validator("prompt_cache_ram")
    @classmethod
    def _size(cls, value: int | str) -> int | str:
        parse_size(value, None, "prompt cache")
        return value

    def prompt_cache_bytes(self) -> int:
        return parse_size(self.prompt_cache_ram, None, "prompt cache")

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
                    there = ", ".join(adapter_base) or "none"
                    raise ValueError(f"stack {stack.name!r}: adapter {name!r} is not declared in [[adapters]] "
                                     f"(adapters: {there})")
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
