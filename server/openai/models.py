"""GET /v1/models and /v1/models/{id}: the registry's served ids rendered as OpenAI model objects, each model
with where it stands (loaded or not, memory, when it unloads) as llama.cpp's router lists them at GET /models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..listing import ServedId
from ..registry import ModelRegistry
from ..wire.auth import Authenticator, is_admin
from ..wire.redact import without_paths
from ..wire.routes import Handler


def model_object(served: ServedId, hide_paths: Callable[[str], str] | None = None) -> dict[str, Any]:
    """OpenAI's model object, plus `root`/`parent` (vLLM's), `max_model_len` for models, `adapters` for stacks,
    and for models and aliases: `status` (unloaded, loading, loaded, failed), `memory_bytes` (estimated),
    `loaded_at`, `expires_at` (unix seconds or null), `sampling_defaults` (each value a request that leaves it out
    gets, and its source: models.toml, gguf or server), `chat_format` once loaded (the family whose tool calls
    and reasoning markers it is read with: docs/chat-formats.md),
    `kind` ("chat", or "reranker": docs/rerank.md), `pinned`, `busy`, `adapters` (names on it), `error` when failed
    (through `hide_paths` for a caller who may not see the server's files)."""
    card: dict[str, Any] = {
        "id": served.id, "object": "model", "created": served.created, "owned_by": "nomoat",
        "root": served.root, "parent": served.parent,
    }
    if served.kind in ("model", "alias"):
        card["max_model_len"] = served.max_model_len
        card["vision"] = served.vision  # takes images: a projector is paired with it (docs/images.md)
    if served.sampling is not None:
        card["sampling_defaults"] = served.sampling.as_json()
    if served.chat_format is not None:
        card["chat_format"] = served.chat_format
    if served.model_kind is not None:  # "reranker": it answers /v1/rerank and /v1/score, never chat
        card["kind"] = served.model_kind
    if served.state is not None:
        state = served.state
        card.update(status=state.status, pinned=state.pinned, busy=state.busy, memory_bytes=state.memory,
                    loaded_at=_seconds(state.loaded_at), expires_at=_seconds(state.expires_at),
                    adapters=list(served.model_adapters), prompt_cache_bytes=state.prompt_cache_bytes)
        if state.error is not None:
            card["error"] = state.error if hide_paths is None else hide_paths(state.error)
    if served.kind == "stack":
        card["adapters"] = [{"name": name, "scale": scale} for name, scale in served.adapters]
    return card


def model_handlers(registry: ModelRegistry, auth: Authenticator) -> dict[str, Handler]:
    """The model list and lookup, by their names in the route table."""

    def path_hider(request: Request, served: ServedId) -> Callable[[str], str] | None:
        """None for an admin key (or none configured); for any other, load errors without file paths."""
        if is_admin(auth, request):
            return None
        return lambda error: without_paths(error, str(registry.base_path(served.root)))

    async def list_models(request: Request) -> Response:
        await registry.residency.estimate_all()
        await registry.read_sampling()
        return JSONResponse({"object": "list", "data": [model_object(s, path_hider(request, s))
                                                        for s in registry.served_ids()]})

    async def get_model(request: Request) -> Response:
        await registry.read_sampling()
        served = registry.served_id(request.path_params["model_id"])
        return JSONResponse(model_object(served, path_hider(request, served)))

    return {"list_models": list_models, "get_model": get_model}


def _seconds(timestamp: float | None) -> int | None:
    return None if timestamp is None else int(timestamp)
