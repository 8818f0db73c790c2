"""GET /v1/models and /v1/models/{id}: the registry's served ids rendered as OpenAI model objects."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..registry import ModelRegistry, ServedId


def model_object(served: ServedId) -> dict[str, Any]:
    """OpenAI's model object, plus `root`/`parent` (vLLM's), `max_model_len` for models, `adapters` for stacks."""
    card: dict[str, Any] = {
        "id": served.id, "object": "model", "created": served.created, "owned_by": "nomoat",
        "root": served.root, "parent": served.parent,
    }
    if served.kind in ("model", "alias"):
        card["max_model_len"] = served.max_model_len
    if served.kind == "stack":
        card["adapters"] = [{"name": name, "scale": scale} for name, scale in served.adapters]
    return card


def model_routes(registry: ModelRegistry) -> list[Route]:
    """The model list and lookup (the route table also mounts them without /v1)."""

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_object(s) for s in registry.served_ids()]})

    async def get_model(request: Request) -> Response:
        return JSONResponse(model_object(registry.served_id(request.path_params["model_id"])))

    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
    ]
