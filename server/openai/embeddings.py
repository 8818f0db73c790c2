"""The embeddings endpoint: its OpenAI request model, and the handler turning it into an embedder call and back."""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from pydantic import Field, StrictInt, StrictStr, ValidationError, ValidatorFunctionWrapHandler, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..core.fields import KeepAlive, parse
from ..core.generate import GenerationCore, Totals, count_tokens
from ..engine.embedder import EmbeddingInput
from ..engine.reranker import Reranker
from ..engine.types import TextPrompt, TokenPrompt
from ..errors import InvalidRequestError
from ..wire.body import race_disconnect

# OpenAI's limit on the number of inputs in one request.
MAX_INPUTS = 2048


class EmbeddingRequest(KeepAlive):
    """POST /v1/embeddings, as OpenAI defines it; `user` and unknown fields are ignored."""

    model: str | None = None
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
    # nomoat's per-request adapter field: refused here rather than silently ignored.
    lora: list[Any] | None = None

    @field_validator("input", mode="wrap")
    @classmethod
    def _shape(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            value = handler(value)
        except ValidationError:
            raise ValueError("input must be a string, a list of strings, a list of token ids "
                             "or a list of token-id lists") from None
        items = [value] if isinstance(value, str) or (value and isinstance(value[0], int)) else value
        if not items:
            raise ValueError("the list of inputs is empty")
        if len(items) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} inputs per request, got {len(items)}")
        for i, item in enumerate(items):
            if not item:
                raise ValueError("the input is an empty string" if isinstance(value, str) else f"input[{i}] is empty")
        return value

    def inputs(self) -> list[EmbeddingInput]:
        """Each input as the engine takes it: one string, strings, one token list or token lists."""
        value = self.input
        if isinstance(value, str):
            return [TextPrompt(value)]
        if isinstance(value[0], int):
            return [TokenPrompt(list(value))]
        return [TextPrompt(v) if isinstance(v, str) else TokenPrompt(list(v)) for v in value]


class Embeddings:
    """The handler for /v1/embeddings; one per app."""

    def __init__(self, core: GenerationCore) -> None:
        self.core = core

    async def handle(self, request: Request) -> Response:
        req: EmbeddingRequest = parse(EmbeddingRequest, await self.core.body(request, "input"))
        if req.lora:
            raise InvalidRequestError("LoRA adapters are not applied to embeddings; leave out 'lora'", param="lora")
        target = await self.core.embedding_target(request, req.model, req.keep_alive)
        if isinstance(target.embedder, Reranker):
            raise InvalidRequestError(
                f"model {target.model_id!r} is a reranker: it has no embeddings; it scores documents at /v1/rerank "
                "and /v1/score", param="model", code="model_not_supported",
            )
        n_embd = target.embedder.n_embd
        if req.dimensions is not None and req.dimensions > n_embd:
            raise InvalidRequestError(
                f"dimensions must be between 1 and {n_embd} for model {target.model_id!r}, got {req.dimensions}",
                param="dimensions", code="invalid_value",
            )
        result = await race_disconnect(request.receive, target.embedder.embed(req.inputs()))
        vectors = _shortened(result.vectors, req.dimensions)
        count_tokens(self.core.metrics, request, Totals(result.prompt_tokens, 0, 0))
        return JSONResponse({
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encoded(v, req.encoding_format)}
                for i, v in enumerate(vectors)
            ],
            "model": target.model_id,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        })


def _shortened(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first `dimensions` components, scaled back to unit length (as OpenAI's v3 models do)."""
    if dimensions is None or dimensions == vectors.shape[1]:
        return vectors
    cut = vectors[:, :dimensions].astype(np.float64)
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return (cut / np.where(norms > 0.0, norms, 1.0)).astype(np.float32)


def _encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # little-endian float32 bytes, what the openai SDK decodes
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    floats: list[float] = vector.tolist()
    return floats
