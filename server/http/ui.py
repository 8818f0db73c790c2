"""The web page: GET / and GET /ui/{path}, served from the package's static folder and nothing else.

The files are read once, when the app is built: a request only looks its path up in that table, so
no path a client sends (`..`, absolute, percent-encoded, a symlink out) can reach another file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..wire.routes import Handler

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# Only these kinds are served; any other file in the folder is a 404. JavaScript modules need a
# JavaScript type, or the browser refuses them under nosniff.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}

# No inline script or style, nothing from another origin: model output can never become live code.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

INDEX = "index.html"


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


class StaticPage:
    """The static folder's files by their path below it, with the headers every answer carries."""

    def __init__(self, root: Path = STATIC_DIR) -> None:
        self.files = read_static(root)

    def handlers(self) -> dict[str, Handler]:
        return {"ui_index": self.index, "ui_file": self.file}

    async def index(self, request: Request) -> Response:
        return self.answer(request, INDEX)

    async def file(self, request: Request) -> Response:
        return self.answer(request, request.path_params["path"])

    def answer(self, request: Request, path: str) -> Response:
        found = self.files.get(path)
        if found is None:
            raise HTTPException(404)
        headers = {
            "ETag": found.etag,
            # Revalidate every time: the URLs carry no version, and an upgraded server must not
            # run an old page against its new API. A 304 keeps that cheap.
            "Cache-Control": "no-cache",
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        if found.etag in _etags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type=found.content_type, headers=headers)


def read_static(root: Path) -> dict[str, StaticFile]:
    """Every regular file of a served kind under `root` whose real path stays inside it, by its
    relative POSIX path. Symlinks leading out and dotfiles are left out."""
    root = root.resolve()
    files: dict[str, StaticFile] = {}
    if not root.is_dir():
        return files
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is None or any(part.startswith(".") for part in relative.parts):
            continue
        real = path.resolve()
        if not real.is_relative_to(root) or not real.is_file():
            continue
        body = real.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        files[relative.as_posix()] = StaticFile(body, content_type, etag)
    return files


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
