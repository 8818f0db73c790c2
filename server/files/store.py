"""The Files API's store: each upload a file under `<state_dir>/files`, with a small JSON of its metadata beside it,
owned by the key that sent it.

Why a JSON per file rather than SQLite: a file's bytes already live in a file of their own, so a metadata file
beside it needs no schema, no lock and no second place to keep consistent; the rename that publishes it is
atomic, one damaged metadata file hides one upload and no other, and `ls` shows what is kept. Nothing is held in
memory: every call reads the directory, so a restart (or a second process on the same state dir) sees the same
files. An upload streams into a temporary `.part` file and is renamed in, data first and metadata last, so a
half-written one never shows; `.part` files and data left without metadata by a crash are removed by the
first upload after a start, once they are an hour old.

All disk work runs off the event loop (asyncio.to_thread); no lock is held across it. The bytes uploads in
flight hold against `files_max_total_bytes` are counted on the loop, between awaits.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from ..errors import InvalidRequestError, NotFoundError, PayloadTooLargeError
from ..settings import Settings
from .fine_tune_format import check_fine_tune_file

# What a client may upload: the openai SDK's FilePurpose. The output purposes (batch_output, fine-tune-results,
# assistants_output) are the server's own to write.
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
DIR_NAME = "files"
MAX_LIST_LIMIT = 10000
_DATA, _META, _PART = ".data", ".json", ".part"
_STALE_SECONDS = 3600.0  # a .part or unpublished data file older than this is a crashed upload's
_CHUNK = 1024 * 1024  # content is read back in chunks of this size


@dataclass(frozen=True)
class FileObject:
    """One stored file's metadata; `owner` is the uploading key's id (None when auth was off)."""

    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    owner: str | None
    status: str = "processed"

    def to_json(self) -> dict[str, Any]:
        """OpenAI's File object, field for field."""
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": self.status, "expires_at": None,
                "status_details": None}


@dataclass(frozen=True)
class FileLimits:
    max_file_bytes: int = 512 * 1024**2
    max_total_bytes: int = 8 * 1024**3


def check_purpose(purpose: Any) -> str:
    if purpose not in PURPOSES:
        raise InvalidRequestError(f"purpose must be one of {', '.join(PURPOSES)} (got {str(purpose)[:40]!r})",
                                  param="purpose")
    assert isinstance(purpose, str)
    return purpose


class FileStore:
    """The files under `root`, each visible to its owner alone; an owner of None (auth off, or an admin asking)
    sees every file, as the response store does."""

    def __init__(self, root: Path, limits: FileLimits | None = None) -> None:
        self.root = root
        self.limits = limits or FileLimits()
        self._in_flight = 0  # bytes of uploads being written now, counted against max_total_bytes
        self._swept = False

    @classmethod
    def from_settings(cls, settings: Settings) -> FileStore:
        return cls(settings.resolved_state_dir() / DIR_NAME,
                   FileLimits(settings.max_file_bytes, settings.files_max_total_bytes))

    # --- writing ---------------------------------------------------------------------------

    async def create(self, owner: str | None, filename: str, purpose: str,
                     chunks: AsyncIterator[bytes]) -> FileObject:
        """Store what `chunks` yields; reading stops at the first byte past a cap (413). A fine-tune file is
        checked before it is published (400 naming the line)."""
        purpose = check_purpose(purpose)
        if not self._swept:
            await asyncio.to_thread(self._sweep)
            self._swept = True
        stored = await asyncio.to_thread(self._stored_bytes)
        file_id = f"file-{secrets.token_hex(12)}"
        part = self.root / f".{file_id}{_PART}"
        handle = await asyncio.to_thread(_open_part, part)
        size = 0
        try:
            try:
                async for chunk in chunks:
                    size += len(chunk)
                    self._in_flight += len(chunk)
                    self._check_room(size, stored)
                    await asyncio.to_thread(handle.write, chunk)
            finally:
                self._in_flight -= size
                await asyncio.to_thread(handle.close)
            if purpose == "fine-tune":
                await asyncio.to_thread(check_fine_tune_file, part)
            found = FileObject(file_id, size, int(time.time()), _clean_name(filename), purpose, owner)
            await asyncio.to_thread(self._publish, part, found)
        except BaseException:
            await asyncio.to_thread(part.unlink, missing_ok=True)
            raise
        return found

    def _check_room(self, size: int, stored: int) -> None:
        cap = self.limits.max_file_bytes
        if size > cap:
            raise PayloadTooLargeError(f"the file is larger than the limit of {cap} bytes (max_file_bytes)",
                                       param="file", code="file_too_large")
        total = self.limits.max_total_bytes
        if stored + self._in_flight > total:
            raise PayloadTooLargeError(
                f"the stored files would hold more than {total} bytes together (files_max_total_bytes; "
                f"{stored} bytes are stored now): delete files to make room", param="file", code="files_full")

    def _publish(self, part: Path, found: FileObject) -> None:
        os.replace(part, self._data(found.id))
        meta = self.root / f".{found.id}{_META}{_PART}"
        meta.write_text(json.dumps(asdict(found)), encoding="utf-8")
        os.replace(meta, self._meta(found.id))

    async def delete(self, file_id: str, owner: str | None) -> None:
        """Remove a file the owner may see (404 otherwise). The metadata goes first: it is what makes a file
        exist, so a crash in between leaves data that the next sweep removes."""
        found = await self.get(file_id, owner)
        await asyncio.to_thread(self._remove, found.id)

    def _remove(self, file_id: str) -> None:
        self._meta(file_id).unlink(missing_ok=True)
        self._data(file_id).unlink(missing_ok=True)

    # --- reading ---------------------------------------------------------------------------

    async def get(self, file_id: str, owner: str | None) -> FileObject:
        """The file's metadata; a missing file and another key's file are the same 404."""
        found = await asyncio.to_thread(self._read_meta, file_id) if _valid_id(file_id) else None
        if found is None or not _visible(found, owner):
            raise NotFoundError(f"no file with id {file_id[:64]!r}", param="file_id")
        return found

    async def path(self, file_id: str, owner: str | None) -> Path:
        """Where the file's bytes lie, for a reader on this box (the trainer)."""
        return self._data((await self.get(file_id, owner)).id)

    async def content(self, file_id: str, owner: str | None) -> AsyncIterator[bytes]:
        """The file's bytes in chunks. The file is opened before this returns (a 404 comes now, not mid-stream),
        and a delete while it streams leaves the open file readable to the end."""
        path = await self.path(file_id, owner)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise NotFoundError(f"no file with id {file_id[:64]!r}", param="file_id") from None
        return _chunks(handle)

    async def list(self, owner: str | None, purpose: str | None = None, after: str | None = None,
                   limit: int = MAX_LIST_LIMIT, order: Literal["asc", "desc"] = "desc") -> dict[str, Any]:
        """OpenAI's cursor page: the owner's files by creation time, those after the file `after` (in `order`)."""
        files = [f for f in await asyncio.to_thread(self._all)
                 if _visible(f, owner) and (purpose is None or f.purpose == purpose)]
        files.sort(key=lambda f: (f.created_at, f.id), reverse=order == "desc")
        if after is not None:
            ids = [f.id for f in files]
            files = files[ids.index(after) + 1:] if after in ids else []
        page = files[:limit]
        return {"object": "list", "data": [f.to_json() for f in page],
                "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
                "has_more": len(files) > limit}

    # --- on disk ---------------------------------------------------------------------------

    def _data(self, file_id: str) -> Path:
        return self.root / f"{file_id}{_DATA}"

    def _meta(self, file_id: str) -> Path:
        return self.root / f"{file_id}{_META}"

    def _read_meta(self, file_id: str) -> FileObject | None:
        try:
            data = json.loads(self._meta(file_id).read_text(encoding="utf-8"))
            return FileObject(**data)
        except (OSError, ValueError, TypeError):
            return None  # missing, or damaged: hidden, as a half-written upload is

    def _all(self) -> builtins.list[FileObject]:  # `list` is the method above
        if not self.root.is_dir():
            return []
        found = (self._read_meta(p.name[:-len(_META)]) for p in self.root.glob(f"file-*{_META}"))
        return [f for f in found if f is not None]

    def _stored_bytes(self) -> int:
        return sum(f.bytes for f in self._all())

    def _sweep(self) -> None:
        """Remove what crashed uploads left: .part files and data without metadata, an hour old or more."""
        if not self.root.is_dir():
            return
        old = time.time() - _STALE_SECONDS
        for entry in self.root.iterdir():
            orphan = entry.name.endswith(_DATA) and not self._meta(entry.name[:-len(_DATA)]).exists()
            if entry.name.endswith(_PART) or orphan:
                _unlink_if_older(entry, old)


def _open_part(part: Path) -> BinaryIO:
    part.parent.mkdir(parents=True, exist_ok=True)
    return part.open("xb")


async def _chunks(handle: BinaryIO) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(handle.read, _CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)


def _unlink_if_older(path: Path, old: float) -> None:
    try:
        if path.stat().st_mtime < old:
            path.unlink()
    except OSError:
        pass  # gone already, or not ours to remove: the next sweep tries again


def _valid_id(file_id: str) -> bool:
    """Ids are ours (`file-` and 24 hex digits): anything else cannot name a path under the root."""
    rest = file_id.removeprefix("file-")
    return file_id.startswith("file-") and len(rest) == 24 and all(c in "0123456789abcdef" for c in rest)


def _visible(found: FileObject, owner: str | None) -> bool:
    return owner is None or found.owner == owner


def _clean_name(filename: str) -> str:
    """The name as the client gave it, without any folder part, at most 255 characters (it is only shown)."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return (name or "upload")[:255]

