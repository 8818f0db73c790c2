"""Runtime adapter administration: GET/POST /v1/adapters, DELETE /v1/adapters/{name}, with path confinement."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .errors import InvalidRequestError, PermissionDeniedError
from .protocol import Lenient, parse
from .registry import AdapterEntry, ModelRegistry
from .serving import read_json


class LoadAdapterRequest(Lenient):
    name: str = Field(min_length=1, max_length=200, pattern=r"^\S+$")
    path: str = Field(min_length=1, max_length=4096)
    base: str | None = None
    scale: float = Field(1.0, ge=-10.0, le=10.0)


def confine(path: str, adapter_dirs: list[Path]) -> Path:
    """The real path of `path` if it lies inside one of `adapter_dirs`, else a 403.

    Relative paths are taken relative to each directory in turn. Symlinks are resolved before
    the check, so a link that points outside is refused; nothing is opened here.
    """
    if not adapter_dirs:
        raise PermissionDeniedError(
            "runtime adapter loading is off: no adapter directory is configured (--adapter-dir)", param="path"
        )
    if "\x00" in path:
        raise InvalidRequestError("path contains a NUL byte", param="path")
    candidate = Path(path).expanduser() if path.startswith("~") else Path(path)
    for directory in adapter_dirs:
        root = Path(os.path.realpath(directory))
        real = Path(os.path.realpath(candidate if candidate.is_absolute() else root / candidate))
        if root in real.parents:
            if not real.exists():
                raise InvalidRequestError(f"no adapter at {path!r} in the adapter directories", param="path",
                                          code="adapter_not_found")
            if real.is_dir():
                # A PEFT directory's files are opened too: none may lead out of the adapter directory.
                for inner in real.iterdir():
                    if root not in Path(os.path.realpath(inner)).parents:
                        raise PermissionDeniedError(
                            f"{path!r} holds {inner.name!r}, which leads outside the adapter directories",
                            param="path",
                        )
            return real
    raise PermissionDeniedError(f"{path!r} is outside the adapter directories", param="path")


def _describe(entry: AdapterEntry) -> dict:
    return {
        "id": entry.name, "object": "adapter", "base": entry.base, "scale": entry.scale,
        "source": str(entry.adapter.source), "sha256": entry.adapter.content_hash,
        "origin": entry.origin, "created": entry.created,
    }


def adapter_routes(registry: ModelRegistry, adapter_dirs: list[Path], max_body_bytes: int) -> list[Route]:
    async def list_adapters(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [_describe(e) for e in registry.adapters()]})

    async def load(request: Request) -> Response:
        req: LoadAdapterRequest = parse(LoadAdapterRequest, await read_json(request, max_body_bytes))
        source = confine(req.path, adapter_dirs)
        entry = await registry.load_adapter(req.name, source, req.base, req.scale)
        return JSONResponse(_describe(entry), status_code=201)

    async def unload(request: Request) -> Response:
        entry = await registry.unload_adapter(request.path_params["name"])
        return JSONResponse({"id": entry.name, "object": "adapter", "deleted": True})

    return [
        Route("/v1/adapters", list_adapters, methods=["GET"]),
        Route("/v1/adapters", load, methods=["POST"]),
        Route("/v1/adapters/{name:path}", unload, methods=["DELETE"]),
    ]
