"""The HTTP client the command line's client commands (run, ps, pull, ls, rm) ask a running server with."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import IO, Any

from .settings import Settings

# How long a server that answers at all may take to say so; none answering at once means none is running.
PROBE_SECONDS = 3.0


class ServerRefused(Exception):
    """The server answered with an error (`status`, and its own `message`), or none answered (`status` 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class ServerClient:
    """The running server the settings point at (Settings.client_url: --host/--port, NOMOAT_HOST, models.toml's
    [server]), asked with the admin key, else the first API key."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.client_url()
        key = settings.admin_key or settings.api_key
        self.key = key.get_secret_value().split(",")[0].strip() if key is not None else None

    def answers(self) -> bool:
        """Whether anything answers HTTP there (a loading server's 503, or a 401 wanting a key, too)."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=PROBE_SECONDS):
                return True
        except urllib.error.HTTPError:
            return True
        except (urllib.error.URLError, OSError):
            return False

    def open(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 60.0) -> IO[bytes]:
        """The answer to METHOD PATH; ServerRefused with the server's own message where it refuses."""
        data = None if body is None else json.dumps(body).encode()
        return self.send(method, path, data, "application/json", timeout)

    def send(self, method: str, path: str, data: bytes | None, content_type: str, timeout: float = 60.0) -> IO[bytes]:
        """As open(), with a body already encoded (a multipart upload: POST /v1/files)."""
        request = urllib.request.Request(self.url + path, method=method, data=data)
        request.add_header("Content-Type", content_type)
        if self.key is not None:
            request.add_header("Authorization", "Bearer " + self.key)
        try:
            answer: IO[bytes] = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise ServerRefused(exc.code, error_message(exc.read()) or f"{exc.code}: {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ServerRefused(0, f"no server answers at {self.url} ({exc})") from None
        return answer


def error_message(body: bytes) -> str:
    """The message of an OpenAI-shaped error body, else the body's start."""
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:200]


def sse_events(stream: IO[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON payloads of a server-sent event stream's `data:` lines, until [DONE]; pings (comments) skipped."""
    for raw in stream:
        line = raw.decode(errors="replace").strip()
        if not line.startswith("data:"):
            continue
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            return
        yield json.loads(data)
