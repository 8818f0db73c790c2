"""Reranking endpoints: /v1/rerank (Jina's and Cohere's shape, as llama.cpp's and vLLM's servers answer it) and
vLLM's /v1/score, over a reranker model's scores."""

from __future__ import annotations

import secrets
import time
from typing import Any

from pydantic import BaseModel, StrictBool, StrictInt, StrictStr, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..core.fields import KeepAlive, parse
from ..core.generate import GenerationCore, Totals, count_tokens
from ..engine.reranker import Reranker
from ..errors import InvalidRequestError
from ..registry import EmbeddingTarget
from ..wire.body import race_disconnect


class DocumentObject(BaseModel):
    """A document as Cohere's and Jina's clients may send it: an object holding its text."""

    text: StrictStr


class RerankRequest(KeepAlive):
    """POST /v1/rerank. `top_n` None or 0 (vLLM's "all") returns every document; `return_documents` (Jina's
    default, true) puts each document back as `{"text"}`; unknown fields (Cohere's `max_chunks_per_doc`,
    `rank_fields`) are ignored."""

    model: str | None = None
    query: StrictStr
    documents: list[StrictStr | DocumentObject]
    top_n: StrictInt | None = None
    return_documents: StrictBool = True

    @field_validator("query")
    @classmethod
    def _query(cls, value: str) -> str:
        if not value:
            raise ValueError("the query is an empty string")
        return value

    @field_validator("top_n")
    @classmethod
    def _top_n(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ValueError(f"top_n must be 0 (all) or more, got {value}")
        return value

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class ScoreRequest(KeepAlive):
    """POST /v1/score, as vLLM defines it: text_1 scored against each of text_2 (one text_1), or pair by pair
    (lists of one length)."""

    model: str | None = None
    text_1: StrictStr | list[StrictStr]
    text_2: StrictStr | list[StrictStr]

    def pairs(self) -> tuple[list[str], list[str]]:
        first = [self.text_1] if isinstance(self.text_1, str) else self.text_1
        second = [self.text_2] if isinstance(self.text_2, str) else self.text_2
        if not first or not second:
            raise InvalidRequestError("text_1 and text_2 must each hold at least one text",
                                      param="text_1" if not first else "text_2")
        if len(first) not in (1, len(second)):
            raise InvalidRequestError(
                f"text_1 holds {len(first)} texts and text_2 {len(second)}: give one text_1, or as many as text_2",
                param="text_1",
            )
        return first, second


class Rerank:
    """The handlers for /v1/rerank (also /rerank, /v2/rerank) and /v1/score; one per app."""

    def __init__(self, core: GenerationCore, max_documents: int) -> None:
        self.core = core
        self.max_documents = max_documents

    async def rerank(self, request: Request) -> Response:
        req: RerankRequest = parse(RerankRequest, await self.core.body(request, "documents"))
        texts = req.texts()
        self._check_count(len(texts), "documents")
        target, reranker = await self._reranker(request, req.model, req.keep_alive)
        result = await race_disconnect(request.receive, reranker.score([req.query], texts))
        count_tokens(self.core.metrics, request, Totals(result.prompt_tokens, 0, 0))
        order = sorted(range(len(texts)), key=lambda i: -float(result.scores[i]))
        results = []
        for i in order[:req.top_n or None]:
            item: dict[str, Any] = {"index": i, "relevance_score": float(result.scores[i])}
            if req.return_documents:
                item["document"] = {"text": texts[i]}
            results.append(item)
        return JSONResponse({
            "id": f"rerank-{secrets.token_hex(12)}", "object": "list", "model": target.model_id, "results": results,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        })

    async def score(self, request: Request) -> Response:
        req: ScoreRequest = parse(ScoreRequest, await self.core.body(request, "text_2"))
        queries, documents = req.pairs()
        self._check_count(len(documents), "text_2")
        target, reranker = await self._reranker(request, req.model, req.keep_alive)
        result = await race_disconnect(request.receive, reranker.score(queries, documents, field="text_2"))
        count_tokens(self.core.metrics, request, Totals(result.prompt_tokens, 0, 0))
        return JSONResponse({
            "id": f"score-{secrets.token_hex(12)}", "object": "list", "created": int(time.time()),
            "model": target.model_id,
            "data": [{"index": i, "object": "score", "score": float(s)} for i, s in enumerate(result.scores)],
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens,
                      "completion_tokens": 0},
        })

    def _check_count(self, count: int, param: str) -> None:
        if count == 0:
            raise InvalidRequestError(f"{param} is empty: give at least one document", param=param)
        if count > self.max_documents:
            raise InvalidRequestError(
                f"{param} holds {count} documents; at most {self.max_documents} per request (max_rerank_documents)",
                param=param,
            )

    async def _reranker(self, request: Request, model: str | None,
                        keep_alive: float | None) -> tuple[EmbeddingTarget, Reranker]:
        target = await self.core.embedding_target(request, model, keep_alive)
        if not isinstance(target.embedder, Reranker):
            registry = self.core.registry
            await registry.read_sampling()  # each file's kind, for the list below
            rerankers = [s.id for s in registry.served_ids() if s.kind == "model" and s.model_kind == "reranker"]
            raise InvalidRequestError(
                f"model {target.model_id!r} is a chat model, not a reranker (no rank pooling in its GGUF); "
                f"models that rerank: {', '.join(rerankers) if rerankers else 'none is configured'}",
                param="model", code="model_not_supported",
            )
        return target, target.embedder
