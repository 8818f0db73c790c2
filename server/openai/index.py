"""GET /v1: an index of the API, so the base URL clients are given (and the startup log prints) answers in a
browser or to curl instead of a 404: what serves there, its version, the page and the OpenAPI document, and every
endpoint below /v1, read from the route table so the list cannot drift from what is served."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import __version__
from ..wire.routes import ENDPOINTS, Handler

_API_ENDPOINTS = [{"method": e.method, "path": e.path} for e in ENDPOINTS if e.path.startswith("/v1/")]


def api_index_handler(*, page: bool) -> Handler:
    """The index's handler; `page`: the web page at / is served (not --no-ui)."""

    async def api_index(request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        return JSONResponse({
            "object": "api", "name": "nomoat", "version": __version__,
            "page": f"{base}/" if page else None, "openapi": f"{base}/openapi.json",
            "endpoints": _API_ENDPOINTS,
        })

    return api_index
