"""The engine: owns llama.cpp state on its own threads and turns generation requests into token streams."""

from .types import (
    AdapterSet,
    ChatPrompt,
    GenerationRequest,
    SamplingParams,
    TextPrompt,
    TokenEvent,
    TokenPrompt,
    TopLogprob,
    Usage,
)

__all__ = [
    "AdapterSet",
    "ChatPrompt",
    "GenerationRequest",
    "SamplingParams",
    "TextPrompt",
    "TokenEvent",
    "TokenPrompt",
    "TopLogprob",
    "Usage",
]
