"""The lifecycle API (llama.cpp router's names): POST /models/load and /models/unload; GET /models is /v1/models."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..core.fields import ModelRef, parse
from ..openai.models import model_object
from ..registry import ModelRegistry
from ..wire.body import read_json
from ..wire.routes import Handler


def lifecycle_handlers(registry: ModelRegistry, max_body_bytes: int, body_timeout: float) -> dict[str, Handler]:
    """POST /models/load {"model", "keep_alive"?} and POST /models/unload {"model"}, by route-table name."""

    async def ref(request: Request) -> tuple[str, ModelRef]:
        req: ModelRef = parse(ModelRef, await read_json(request, max_body_bytes, body_timeout))
        return registry.model_name(req.model), req

    async def load(request: Request) -> Response:
        name, req = await ref(request)
        lease = await registry.residency.acquire(name, req.keep_alive)
        try:
            return JSONResponse(model_object(registry.served_id(name)))
        finally:
            lease.release()  # it only loads: nothing runs on it, so keep_alive counts from here

    async def unload(request: Request) -> Response:
        name, _ = await ref(request)
        done = await registry.residency.unload(name)
        # A busy model unloads once its requests finish (202); nothing is cut.
        return JSONResponse(model_object(registry.served_id(name)), status_code=200 if done else 202)

    return {"load_model": load, "unload_model": unload}
