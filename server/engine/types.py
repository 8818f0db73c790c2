"""The engine's own request and event types: plain dataclasses, no HTTP and no llama.cpp."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..formats import GENERIC, ChatFormat


@dataclass(frozen=True)
class ModelInfo:
    """What the protocols need to know of a loaded model, read once when its engine starts: handlers read
    this, never the engine's llama.cpp model."""

    name: str
    n_vocab: int
    n_ctx: int  # tokens per sequence
    parallel: int  # sequences decoded at once
    supports_tools: bool  # the chat template renders `tools` itself
    reasoning_format: str  # models.toml's: "auto", "none", ...
    # Its family's tool-call and reasoning markers, detected from its chat template (server/formats/).
    chat_format: ChatFormat = GENERIC
    # The file's general.sampling.* values (engine/sampling_defaults.py), under models.toml's per request.
    gguf_sampling: Mapping[str, float | int] = field(default_factory=dict)
    # "reranker" for a model with rank pooling (it scores pairs at /v1/rerank, never generates), else "chat".
    kind: str = "chat"


@dataclass(frozen=True)
class AppliedAdapter:
    """One loaded LoRA adapter at one scale. `handle` is the engine's opaque llama.cpp pointer."""

    name: str
    scale: float
    content_hash: str
    handle: Any = field(default=None, compare=False, repr=False)


# What KV computed under an adapter set is keyed by: each adapter's (content hash, scale).
AdapterKey = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class AdapterSet:
    """The LoRA adapters one sequence is evaluated under.

    `key` identifies the set for any KV reuse: each adapter's content hash and scale, never
    its name, so a file reloaded under an old name never meets KV computed under the old one.
    """

    adapters: tuple[AppliedAdapter, ...] = ()

    @property
    def key(self) -> AdapterKey:
        return tuple((a.content_hash, a.scale) for a in self.adapters)

    def __bool__(self) -> bool:
        return bool(self.adapters)

    def label(self) -> str:
        """`name@scale,...`; empty for the base model alone."""
        return ",".join(f"{a.name}@{a.scale:g}" for a in self.adapters)


NO_ADAPTERS = AdapterSet()


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: str | None = None  # GBNF, root rule `root`: constrains every sampled token

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Speculation:
    """How a sequence drafts tokens to verify in one step: `ngram` (prompt lookup) or `none`;
    `n_max` caps the drafts per step. Output is the same either way (engine/speculative.py)."""

    type: str = "none"
    n_max: int | None = None  # None: the model's speculative_n_max


@dataclass(frozen=True)
class ChatPrompt:
    """Chat messages to render with the model's chat template (OpenAI message dicts).

    `tools` (OpenAI tool definitions) go to the template for models whose template renders them;
    `variables` are more names the template may read (`enable_thinking`, `reasoning_effort`...).
    """

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    # Image files (PNG, JPEG...) in the order the messages' text holds engine/vision.py's MEDIA_MARKER for them.
    images: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class TextPrompt:
    """Raw text, tokenized as is: no chat template."""

    text: str


@dataclass(frozen=True)
class TokenPrompt:
    tokens: list[int]


Prompt = ChatPrompt | TextPrompt | TokenPrompt


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt as the model evaluates it: its tokens, and the chat template's text ("" for other prompts)."""

    tokens: list[int]
    text: str = ""
    media: Any = None  # a prompt with images: its engine/vision.py PromptMedia (its tokens hold placeholders)


@dataclass
class GenerationRequest:
    prompt: Prompt
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    adapters: AdapterSet = NO_ADAPTERS
    logprobs: bool = False
    top_logprobs: int = 0
    speculative: Speculation | None = None  # None: the model's default
    cache_prompt: bool = True  # llama.cpp's field: False neither saves nor restores a prompt cache state


@dataclass(frozen=True)
class TopLogprob:
    token: str
    bytes: list[int]
    logprob: float


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True)
class TokenEvent:
    """One step of a stream: new text (possibly empty while a stop string is undecided),
    the token that produced it, and on the last event the finish reason and usage."""

    text: str = ""
    token_id: int | None = None
    token_text: str = ""
    token_bytes: list[int] | None = None
    logprob: float | None = None
    top_logprobs: list[TopLogprob] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    error: Exception | None = None
    stop_sequence: str | None = None  # on a "stop" finish: the stop string that ended it (None: end of text)
    # On a sequence's first token: the prompt tokens whose KV was reused, known once it has a slot (the last
    # event's usage says it again); Anthropic's message_start reports it before any text.
    cached_tokens: int | None = None

    @property
    def final(self) -> bool:
        return self.finish_reason is not None or self.error is not None
