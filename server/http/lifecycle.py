"""The lifecycle API (llama.cpp router's names): POST /models/load and /models/unload; GET /models is /v1/models.

Also the middleware that keeps each model a request resolved busy until the request's last byte.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..core.fields import ModelRef, parse
from ..openai.models import model_object
from ..registry import ModelRegistry
from ..residency.resident import lease_scope
from ..wire.body import read_json
from ..wire.routes import Handler


class LeaseMiddleware:
    """Every model resolved while a request runs stays busy until its response is sent: never unloaded under it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with lease_scope():  # harmless around a non-HTTP scope: it resolves no model
            await self.app(scope, receive, send)


def lifecycle_handlers(registry: ModelRegistry, max_body_bytes: int, body_timeout: float) -> dict[str, Handler]:
    """POST /models/load {"model", "keep_alive"?} and POST /models/unload {"model"}, by route-table name."""

    async def ref(request: Request) -> tuple[str, ModelRef]:
        req: ModelRef = parse(ModelRef, await read_json(request, max_body_bytes, body_timeout))
        return registry.model_name(req.model), req

    async def load(request: Request) -> Response:
        name, req = await ref(request)
        await registry.residency.acquire(name, req.keep_alive)
        return JSONResponse(model_object(registry.served_id(name)))

    async def unload(request: Request) -> Response:
        name, _ = await ref(request)
        done = await registry.residency.unload(name)
        # A busy model unloads once its requests finish (202); nothing is cut.
        return JSONResponse(model_object(registry.served_id(name)), status_code=200 if done else 202)

    return {"load_model": load, "unload_model": unload}
