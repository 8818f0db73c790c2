"""A Hugging Face Hub on 127.0.0.1: the endpoints huggingface_hub calls to list a repo and download its files.

`GET /api/models/OWNER/REPO` (the listing with sizes), and `HEAD`/`GET /OWNER/REPO/resolve/REV/PATH` with the
headers hf_hub_download reads (ETag, X-Repo-Commit, Content-Length) and `Range` resumption. Every request is
recorded; `cut_next(path)` makes the next full download of a file stop half way through, as a dropped
connection does; `misbehave(path, how)` makes every download of it hostile (see `Misbehaviour`). File names
are served as given, `../` and absolute ones included, as a hostile Hub lists them.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

_CHUNK = 1 << 20
# oversize: the body runs 1 MiB past the size the listing and HEAD announce (with a Content-Length to match).
# endless: every GET, Range or not, answers 200 with a chunked body that repeats the file for ever.
# dribble: the announced size, one byte every DRIBBLE_SECONDS, so it would take minutes to finish.
Misbehaviour = Literal["oversize", "endless", "dribble"]
DRIBBLE_SECONDS = 0.1


@dataclass(frozen=True)
class HubRequest:
    method: str
    path: str
    range: str | None


@dataclass
class _File:
    source: Path
    size: int
    etag: str


class FakeHub:
    """Repos of files on disk, served over HTTP until `close()`."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, _File]] = {}
        self.commits: dict[str, str] = {}
        self.requests: list[HubRequest] = []
        self._cut: set[str] = set()
        self.misbehaving: dict[str, Misbehaviour] = {}
        self.unsized: set[str] = set()  # listed without a size, as a Hub that will not say how much it sends
        self.stopped = threading.Event()  # ends the hostile bodies' loops at close()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def add_repo(self, repo: str, files: dict[str, Path]) -> None:
        """`files`: repo path → a file whose bytes it serves (one source may appear under several names)."""
        self.repos[repo] = {name: _File(src, src.stat().st_size, _sha256(src)) for name, src in files.items()}
        self.commits[repo] = hashlib.sha1(repo.encode()).hexdigest()

    def cut_next(self, path: str) -> None:
        """The next GET of `path` without a Range sends half the file, then closes the connection."""
        self._cut.add(path)

    def misbehave(self, path: str, how: Misbehaviour) -> None:
        self.misbehaving[path] = how

    def requests_for(self, path: str) -> list[HubRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/" + path)]

    def close(self) -> None:
        self.stopped.set()
        self._server.shutdown()
        self._server.server_close()

    def _record(self, request: HubRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _take_cut(self, path: str) -> bool:
        with self._lock:
            if path in self._cut:
                self._cut.discard(path)
                return True
            return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+?)(?:/revision/(?P<rev>[^/]+))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._serve(body=True)

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def _serve(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub._record(HubRequest(self.command, path, self.headers.get("Range")))
            if match := _API.match(path):
                self._info(match["repo"])
            elif match := _RESOLVE.match(path):
                self._file(match["repo"], match["path"], body)
            else:
                self._error(404, "EntryNotFound", f"no route {path}")

        def _info(self, repo: str) -> None:
            files = hub.repos.get(repo)
            if files is None:
                self._error(404, "RepoNotFound", "Repository not found")
                return
            siblings = [{"rfilename": name, "size": f.size, "blobId": f.etag[:40],
                         "lfs": {"size": f.size, "sha256": f.etag, "pointerSize": 134}} if name not in hub.unsized
                        else {"rfilename": name} for name, f in files.items()]
            data = json.dumps({"id": repo, "modelId": repo, "sha": hub.commits[repo], "private": False,
                               "siblings": siblings}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _file(self, repo: str, name: str, body: bool) -> None:
            files = hub.repos.get(repo)
            if files is None:
                self._error(404, "RepoNotFound", "Repository not found")
                return
            found = files.get(name)
            if found is None:
                self._error(404, "EntryNotFound", "Entry not found", commit=hub.commits[repo])
                return
            how = hub.misbehaving.get(name)
            if body and how in ("endless", "oversize"):
                (self._endless if how == "endless" else self._oversize)(repo, found)
                return
            start = 0
            wanted = self.headers.get("Range")
            if wanted and (m := re.fullmatch(r"bytes=(\d+)-", wanted)):
                start = int(m[1])
            self.send_response(206 if start else 200)
            self.send_header("ETag", f'"{found.etag}"')
            self.send_header("X-Repo-Commit", hub.commits[repo])
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(found.size - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{found.size - 1}/{found.size}")
            self.end_headers()
            if not body:
                return
            if how == "dribble":
                self._dribble(found, start)
                return
            stop = found.size // 2 if not start and hub._take_cut(name) else found.size
            with found.source.open("rb") as fh:
                fh.seek(start)
                left = stop - start
                while left > 0 and (chunk := fh.read(min(_CHUNK, left))):
                    self.wfile.write(chunk)
                    left -= len(chunk)
            if stop < found.size:
                self.wfile.flush()
                self.close_connection = True  # the client sees a body shorter than its Content-Length

        def _file_headers(self, repo: str, found: _File) -> None:
            self.send_header("ETag", f'"{found.etag}"')
            self.send_header("X-Repo-Commit", hub.commits[repo])

        def _oversize(self, repo: str, found: _File) -> None:
            data = found.source.read_bytes() + b"\0" * _CHUNK
            self.send_response(200)
            self._file_headers(repo, found)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self._send(data)

        def _endless(self, repo: str, found: _File) -> None:
            data = found.source.read_bytes()
            self.send_response(200)
            self._file_headers(repo, found)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while not hub.stopped.is_set() and self._send(b"%x\r\n%b\r\n" % (len(data), data)):
                pass

        def _dribble(self, found: _File, start: int) -> None:
            with found.source.open("rb") as fh:
                fh.seek(start)
                while not hub.stopped.wait(DRIBBLE_SECONDS) and (byte := fh.read(1)) and self._send(byte):
                    pass
            self.close_connection = True

        def _send(self, data: bytes) -> bool:
            """False once the client has gone (it stopped reading and closed the connection)."""
            try:
                self.wfile.write(data)
                self.wfile.flush()
            except OSError:
                self.close_connection = True
                return False
            return True

        def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
            data = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            if commit is not None:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

    return Handler
