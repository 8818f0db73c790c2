"""Runtime adapter administration: GET/POST /v1/adapters, DELETE /v1/adapters/{name}, with path confinement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..adapters.catalogue import AdapterEntry
from ..adapters.files import confine
from ..core.fields import Lenient, parse
from ..registry import ModelRegistry
from ..wire.body import read_json
from ..wire.routes import Handler


class LoadAdapterRequest(Lenient):
    name: str = Field(min_length=1, max_length=200, pattern=r"^\S+$")
    path: str = Field(min_length=1, max_length=4096)
    base: str | None = None
    scale: float = Field(1.0, ge=-10.0, le=10.0)
    # nomoat's own: load over an adapter of the same name, which serves until the new one is in.
    replace: bool = False


def _describe(entry: AdapterEntry) -> dict[str, Any]:
    return {
        "id": entry.name, "object": "adapter", "base": entry.base, "scale": entry.scale,
        "source": str(entry.adapter.source), "sha256": entry.adapter.content_hash,
        "origin": entry.origin, "created": entry.created,
    }


def adapter_handlers(registry: ModelRegistry, adapter_dirs: list[Path], max_body_bytes: int,
                     body_timeout: float) -> dict[str, Handler]:
    """The adapter list, load and unload, by their names in the route table."""
    catalogue = registry.catalogue

    async def list_adapters(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [_describe(e) for e in catalogue.entries()]})

    async def load(request: Request) -> Response:
        req: LoadAdapterRequest = parse(LoadAdapterRequest, await read_json(request, max_body_bytes, body_timeout))
        source = confine(req.path, adapter_dirs)
        entry = await catalogue.load(req.name, source, req.base, req.scale, replace=req.replace)
        return JSONResponse(_describe(entry), status_code=201)

    async def unload(request: Request) -> Response:
        entry = await catalogue.unload(request.path_params["name"])
        return JSONResponse({"id": entry.name, "object": "adapter", "deleted": True})

    return {"list_adapters": list_adapters, "load_adapter": load, "unload_adapter": unload}
