"""Limits on what the Hub may send while nomoat asks it for a model: bytes by the listing's sizes, time by a deadline.

huggingface_hub trusts the server: a body longer than announced is written whole before its size check fails,
and a body that never ends is resumed for as long as each try brings a byte. So every response huggingface_hub
receives inside `DownloadLimits.scope()` is read through a counter that stops the download, with a HubError,
at the first byte past the limit or past the deadline. The counter sits on each network read (a response
hook wraps the body's stream), not on huggingface_hub's 10 MB chunks, so a Hub that dribbles is stopped too.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from contextvars import ContextVar

import httpx2
from huggingface_hub import constants, set_client_factory
from huggingface_hub.utils._http import default_client_factory

from ..errors import ConfigError

# A cut connection loses what huggingface_hub had read of its current 10 MB chunk, and the resume asks for it
# again: this many resumes' worth of bytes may arrive beyond a file's size in all.
RESUMED_CHUNKS = 4
RESUME_SLACK_BYTES = RESUMED_CHUNKS * constants.DOWNLOAD_CHUNK_SIZE
# A repository listing (JSON) runs to a few hundred kB for repos of thousands of files.
MAX_LISTING_BYTES = 64 << 20

_active: ContextVar[DownloadLimits | None] = ContextVar("nomoat_download_limits", default=None)
_installed = False


class DownloadRefused(ConfigError):
    """The Hub sent more than it announced, or took longer than allowed: the download stopped, nothing kept.

    A ConfigError subclass as HubError is (store/hub.py turns it into one with the file's name)."""


class DownloadLimits:
    """The deadline of one `fetch` and the size the current file may reach; `scope()` applies them."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self._file: str | None = None
        self._size = 0
        self._received = 0

    @contextlib.contextmanager
    def scope(self) -> Iterator[DownloadLimits]:
        """Every Hub response in this block (this thread's) is held to these limits."""
        _install()
        token = _active.set(self)
        try:
            yield self
        finally:
            _active.reset(token)

    @contextlib.contextmanager
    def file(self, name: str, size: int) -> Iterator[None]:
        """Downloads in this block are of `name`, announced as `size` bytes."""
        self._file, self._size, self._received = name, size, 0
        try:
            yield
        finally:
            self._file = None

    def check_time(self, wait: float = 0.0) -> None:
        if time.monotonic() + wait > self.deadline:
            what = f"asks to wait {wait:g} s, past" if wait else "took longer than"
            raise DownloadRefused(f"the Hub {what} pull_timeout_seconds ({self.timeout:g} s); the download was "
                                  "stopped")

    def _read(self, n: int, position: int) -> None:
        self._received += n
        if self._file is None:
            if position > MAX_LISTING_BYTES:
                raise DownloadRefused(f"the Hub's answer runs past {MAX_LISTING_BYTES} bytes, more than any "
                                      "repository listing holds; stopped")
        elif position > self._size:
            raise DownloadRefused(f"the Hub sent more of {self._file} than the {self._size} bytes its listing "
                                  "announces; the download was stopped")
        elif self._received > self._size + RESUME_SLACK_BYTES:
            raise DownloadRefused(f"the Hub sent {self._received} bytes of {self._file} over resumed downloads, more "
                                  f"than its {self._size} bytes and {RESUME_SLACK_BYTES} for resumes; the download "
                                  "was stopped")
        self.check_time()


class _LimitedStream(httpx2.SyncByteStream):
    def __init__(self, stream: httpx2.SyncByteStream, limits: DownloadLimits, start: int) -> None:
        self._stream, self._limits, self._start = stream, limits, start

    def __iter__(self) -> Iterator[bytes]:
        position = self._start
        for data in self._stream:
            position += len(data)
            self._limits._read(len(data), position)
            yield data

    def close(self) -> None:
        self._stream.close()


def _on_response(response: httpx2.Response) -> None:
    limits = _active.get()
    if limits is None:
        return
    retry_after = response.headers.get("Retry-After", "")
    limits.check_time(float(retry_after) if retry_after.isdigit() else 0.0)
    if isinstance(response.stream, httpx2.SyncByteStream):
        response.stream = _LimitedStream(response.stream, limits, _first_byte(response))


def _first_byte(response: httpx2.Response) -> int:
    """Where the body starts in the file: a resumed download's `Content-Range: bytes START-END/SIZE`."""
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match[1]) if response.status_code == 206 and match else 0


def _client() -> httpx2.Client:
    client = default_client_factory()
    client.event_hooks = {**client.event_hooks, "response": [*client.event_hooks["response"], _on_response]}
    return client


def _install() -> None:
    """Make huggingface_hub's shared client call `_on_response` (a no-op outside a scope), once per process."""
    global _installed
    if not _installed:
        set_client_factory(_client)
        _installed = True
