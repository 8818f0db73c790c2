"""The engine's face: what the protocols and the generation core use of a model's engine, as Protocols that the
engine and the tests' fake engine both meet, so nothing above reaches into the llama.cpp model behind it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from .generation import Generation
from .types import ChatPrompt, GenerationRequest, ModelInfo, Prompt

T = TypeVar("T")


class Vocabulary(Protocol):
    """A model's tokenizer and chat template, read without generating (llama.cpp's /tokenize and friends)."""

    def tokenize(self, text: str, *, add_bos: bool, special: bool = True) -> list[int]: ...

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for when generated (special tokens render as nothing)."""
        ...

    def token_bytes(self, token: int, *, special: bool) -> bytes: ...

    def detokenize(self, tokens: list[int]) -> str:
        """Text for tokens, special ones written out; an id outside the vocabulary is InvalidInput."""
        ...

    def chat_text(self, prompt: ChatPrompt) -> str:
        """The text the chat template renders, ending with the generation prompt."""
        ...


class EngineFace(Protocol):
    """What a request resolves to generates through this: `Target.engine`."""

    @property
    def info(self) -> ModelInfo: ...

    async def submit(self, request: GenerationRequest) -> Generation:
        """Admit a request or raise the engine's error (a bad prompt, a full queue, shutting down)."""
        ...

    async def count_tokens(self, prompt: Prompt) -> int:
        """The tokens `prompt` takes, counted as `submit` would (chat template included)."""
        ...

    async def read_vocabulary(self, fn: Callable[[Vocabulary], T]) -> T:
        """`fn(vocabulary)` where the engine tokenizes, off the event loop: a megabyte of text, or the JSON of a
        million tokens, must not stall it."""
        ...
