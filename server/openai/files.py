"""OpenAI's Files API: POST /v1/files (multipart), GET /v1/files, GET /v1/files/{id}, GET /v1/files/{id}/content,
DELETE /v1/files/{id}; the files live in files/store.py, each owned by the key that uploaded it.

The upload is never taken whole into memory: its body streams through starlette's multipart parser (which
spools the file part to a temporary file) under the file cap, refused at once by its Content-Length and
counted while it arrives, each read waiting at most body_timeout_seconds; the store then copies the part in,
counting again, and checks a fine-tune file before publishing it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Literal

from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import InvalidRequestError, PayloadTooLargeError, RequestTimeoutError
from ..files.store import MAX_LIST_LIMIT, FileStore, check_purpose
from ..wire.body import ClientDisconnected
from ..wire.context import RequestContext
from ..wire.routes import Handler

# Room in the body beyond the file's own bytes: the multipart boundaries, part headers and the purpose field.
_FRAMING = 64 * 1024
_CHUNK = 1024 * 1024


def file_handlers(store: FileStore, body_timeout: float) -> dict[str, Handler]:
    """The Files API's routes, by their names in the route table."""

    async def create(request: Request) -> Response:
        context = RequestContext.of(request)
        form = await _parse_form(request, store.limits.max_file_bytes, body_timeout)
        try:
            purpose = form.get("purpose")
            if not isinstance(purpose, str) or not purpose:
                raise InvalidRequestError("purpose is required: one of the multipart fields", param="purpose")
            check_purpose(purpose)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise InvalidRequestError("file is required: a multipart part with a filename", param="file")
            found = await store.create(context.key_id, upload.filename or "upload", purpose, _read(upload))
        finally:
            await form.close()
        return JSONResponse(found.to_json())

    async def list_files(request: Request) -> Response:
        query = request.query_params
        limit = _limit(query.get("limit"))
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequestError(f"order must be asc or desc (got {order[:20]!r})", param="order")
        sort: Literal["asc", "desc"] = "asc" if order == "asc" else "desc"
        page = await store.list(_viewer(request), query.get("purpose"), query.get("after"), limit, sort)
        return JSONResponse(page)

    async def get_file(request: Request) -> Response:
        found = await store.get(request.path_params["file_id"], _viewer(request))
        return JSONResponse(found.to_json())

    async def file_content(request: Request) -> Response:
        file_id, viewer = request.path_params["file_id"], _viewer(request)
        found = await store.get(file_id, viewer)
        chunks = await store.content(file_id, viewer)
        return StreamingResponse(chunks, media_type="application/octet-stream",
                                 headers={"content-length": str(found.bytes)})

    async def delete_file(request: Request) -> Response:
        file_id = request.path_params["file_id"]
        await store.delete(file_id, _viewer(request))
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    return {"create_file": create, "list_files": list_files, "get_file": get_file, "file_content": file_content,
            "delete_file": delete_file}


def _viewer(request: Request) -> str | None:
    """Whose files a request sees: its key's; every file with auth off (no key) or for an admin key."""
    context = RequestContext.of(request)
    return None if context.admin else context.key_id


async def _parse_form(request: Request, max_file_bytes: int, timeout: float) -> FormData:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequestError("POST /v1/files takes a multipart/form-data body with the parts file and purpose",
                                  param="file")
    limit = max_file_bytes + _FRAMING
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise _too_large(max_file_bytes)
    parser = MultiPartParser(request.headers, _body(request, max_file_bytes, limit, timeout), max_files=1,
                             max_fields=8, max_part_size=_FRAMING)
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequestError(f"the multipart body cannot be read: {exc.message}", param="file") from None


async def _body(request: Request, max_file_bytes: int, limit: int, timeout: float) -> AsyncGenerator[bytes, None]:
    """The request body's chunks, counted: 413 past `limit`, 408 when one read waits more than `timeout`."""
    size = 0
    while True:
        try:
            message = await asyncio.wait_for(request.receive(), timeout)
        except TimeoutError:
            raise RequestTimeoutError(f"the upload paused longer than {timeout:g} seconds (body_timeout_seconds)") from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(max_file_bytes)
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def _read(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(_CHUNK):
        yield chunk


def _too_large(max_file_bytes: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"the file is larger than the limit of {max_file_bytes} bytes (max_file_bytes)",
                                param="file", code="file_too_large")


def _limit(value: str | None) -> int:
    if value is None:
        return MAX_LIST_LIMIT
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_LIST_LIMIT:
        raise InvalidRequestError(f"limit must be a whole number from 1 to {MAX_LIST_LIMIT} (got {value[:20]!r})",
                                  param="limit")
    return int(value)
