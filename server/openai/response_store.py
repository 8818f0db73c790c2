"""Stored responses (`store: true`): one SQLite file in the state directory, read and written on a
small executor of the store's own, kept within age, count and byte limits, owned by the key that made them.

SQLite never runs on the event loop, and never on the default thread pool either (grammars are built
there: a locked store must not delay a json_schema chat). Every call waits at most
`responses_store_timeout_seconds`, its time in the executor's queue included; a store that is locked,
corrupt, not a file or not writable answers 503 (StoreUnavailableError), and `store: false` never
touches it. The file's path comes from the settings alone; ids are only ever bound SQL parameters.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import InvalidRequestError, StoreUnavailableError
from ..settings import Settings
from . import response_db as db
from .response_db import Head, Retention, Turn, Viewer
from .store_threads import StoreThreads

log = logging.getLogger("nomoat.store")  # the store's subsystem name: tests/test_response_store.py filters on it

FILE_NAME = "responses.sqlite3"
# Two threads: one request's write never queues a GET behind it; more buy nothing on one SQLite file.
_THREADS = 2
# Age pruning walks every chain: at most this often. Count and bytes are checked on every write.
_PRUNE_INTERVAL = 60.0
# The same store failure is logged at most this often (a locked store fails every request).
_LOG_INTERVAL = 60.0
T = TypeVar("T")


@dataclass(frozen=True)
class StoreLimits:
    """The settings the store enforces (see their descriptions in settings.py)."""

    max_age: float = 30 * 24 * 3600.0
    max_count: int = 10000
    max_total_bytes: int = 1024**3
    max_stored_bytes: int = 4 * 1024**2
    max_chain_length: int = 1000
    max_chain_bytes: int = 32 * 1024**2
    timeout: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> StoreLimits:
        return cls(settings.responses_max_age, settings.responses_max_count, settings.responses_max_total_bytes,
                   settings.responses_max_stored_bytes, settings.responses_max_chain_length,
                   settings.responses_max_chain_bytes, settings.responses_store_timeout_seconds)


@dataclass(frozen=True)
class Conversation:
    """A stored response and the chain it ends, first turn first; `missing` names an earlier response the
    retention limits removed (the conversation can then not be rebuilt)."""

    head: Head
    turns: list[Turn]
    missing: str | None

    def items(self) -> list[dict[str, Any]]:
        """Every turn's input and output items: what a continuation of the head runs on."""
        return [item for turn in self.turns for item in (*turn.input, *turn.output)]

    def input_items(self) -> list[dict[str, Any]]:
        """The items the head ran on: all but its own output."""
        return self.items()[:-len(self.turns[-1].output) or None] if self.turns else []


class ResponseStore:
    """The responses kept under `state_dir`; the file is created on the first write and checked at once."""

    def __init__(self, state_dir: Path, limits: StoreLimits) -> None:
        self.path = state_dir / FILE_NAME
        self.limits = limits
        self._executor = StoreThreads(_THREADS, "nomoat-store")
        self._schema_ready = False
        self._last_prune = 0.0
        self._logged: dict[str, float] = {}
        self._executor.submit(self._startup_check)

    @classmethod
    def from_settings(cls, settings: Settings) -> ResponseStore:
        return cls(settings.resolved_state_dir(), StoreLimits.from_settings(settings))

    # --- what the handlers call -------------------------------------------------------------

    def admit(self, response: dict[str, Any], items: list[dict[str, Any]], previous: Head | None,
              store: bool) -> None:
        """Before generating: a 400 for what could never be answered as JSON (NaN) or stored within the limits."""
        size = db.encode(response, items).size
        if not store:
            return
        limits = self.limits
        if size > limits.max_stored_bytes:
            raise _too_large(size, limits.max_stored_bytes)
        if previous is None:
            return
        if previous.depth >= limits.max_chain_length:
            raise InvalidRequestError(
                f"the conversation of previous_response_id already holds {previous.depth} responses, the most "
                f"responses_max_chain_length ({limits.max_chain_length}) allows: start a new conversation "
                "(send its items as input)", param="previous_response_id", code="conversation_too_long")
        if previous.chain_bytes + size > limits.max_chain_bytes:
            raise InvalidRequestError(
                f"the conversation of previous_response_id would hold {previous.chain_bytes + size} bytes, more "
                f"than responses_max_chain_bytes ({limits.max_chain_bytes}): start a new conversation "
                "(send its items as input)", param="previous_response_id", code="conversation_too_long")

    async def put(self, response: dict[str, Any], items: list[dict[str, Any]], previous_id: str | None,
                  owner: str | None) -> None:
        await self._run(lambda conn: self._put(conn, response, items, previous_id, owner), create=True, absent=None)

    async def get(self, response_id: str, viewer: Viewer) -> dict[str, Any] | None:
        return await self._run(lambda conn: db.response(conn, response_id, viewer, self._since()), absent=None)

    async def delete(self, response_id: str, viewer: Viewer) -> bool:
        return await self._run(lambda conn: db.delete(conn, response_id, viewer, self._since()), absent=False)

    async def conversation(self, response_id: str, viewer: Viewer) -> Conversation | None:
        """The response `viewer` may see, with its chain; None when there is none such."""
        return await self._run(lambda conn: self._conversation(conn, response_id, viewer), absent=None)

    # --- on the store's threads -------------------------------------------------------------

    def _put(self, conn: sqlite3.Connection, response: dict[str, Any], items: list[dict[str, Any]],
             previous_id: str | None, owner: str | None) -> None:
        encoded = db.encode(response, items)
        if encoded.size > self.limits.max_stored_bytes:  # the output counts too
            raise _too_large(encoded.size, self.limits.max_stored_bytes)
        now = time.time()
        db.put(conn, response["id"], owner, previous_id, encoded, now)
        keep = Retention(self.limits.max_age, self.limits.max_count, self.limits.max_total_bytes)
        if now - self._last_prune >= _PRUNE_INTERVAL or db.over_limits(conn, keep):
            self._last_prune = now
            gone = db.prune(conn, keep, now, spare=response["id"])
            if gone:
                log.info("store: %d responses past the retention limits removed", gone)

    def _conversation(self, conn: sqlite3.Connection, response_id: str, viewer: Viewer) -> Conversation | None:
        head = db.head(conn, response_id, viewer, self._since())
        if head is None:
            return None
        turns, missing = db.chain(conn, head)
        return Conversation(head, turns, missing)

    def _since(self) -> float:
        return time.time() - self.limits.max_age

    async def _run(self, work: Callable[[sqlite3.Connection], T], *, absent: T, create: bool = False) -> T:
        """`work` on a connection in the store's executor; `absent` when there is no file and `create` is off."""
        deadline = time.monotonic() + self.limits.timeout
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._job, work, absent, create, deadline)

    def _job(self, work: Callable[[sqlite3.Connection], T], absent: T, create: bool, deadline: float) -> T:
        left = deadline - time.monotonic()
        if left <= 0:  # queued behind calls that waited on a lock: give up as they would
            raise StoreUnavailableError(
                f"the response store is busy: this request waited {self.limits.timeout:g} s "
                "(responses_store_timeout_seconds) for it; try again")
        try:
            if not create and not self.path.exists():
                return absent
            if create:
                self._make_file()
            with closing(db.connect(str(self.path), left, create)) as conn:
                if not self._schema_ready:
                    db.ensure_schema(conn)
                    self._schema_ready = True
                return work(conn)
        except (sqlite3.Error, OSError) as exc:
            failure = self._failure(exc)
            if not _is_lock(exc):
                self._schema_ready = False  # the file may be replaced before the next call
            self._log_failure(failure, exc)
            raise failure from None

    def _make_file(self) -> None:
        if self.path.exists() or self.path.is_symlink():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Conversations are private: the file (and SQLite's -wal and -shm files, which copy its mode)
        # is for the server's user alone.
        self.path.touch(mode=0o600)

    def _failure(self, exc: BaseException) -> StoreUnavailableError:
        """What a client is told (no file paths: the log has them)."""
        name = str(getattr(exc, "sqlite_errorname", "") or "")
        if _is_lock(exc):
            return StoreUnavailableError(
                f"the response store is locked by another process or connection (waited {self.limits.timeout:g} s, "
                "responses_store_timeout_seconds): try again; requests with store: false are not affected")
        if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
            reason = "file is corrupt (not a SQLite database)"
        elif self.path.is_dir():
            reason = "file's place is taken by a directory"
        elif name.startswith("SQLITE_FULL"):
            reason = "disk is full"
        elif name.startswith(("SQLITE_READONLY", "SQLITE_PERM", "SQLITE_CANTOPEN")) or isinstance(exc, PermissionError):
            reason = "file or its directory cannot be written (permissions)"
        else:
            reason = f"failed ({name or type(exc).__name__})"
        return StoreUnavailableError(
            f"the response store's {reason}: stored responses are unavailable until the server's administrator "
            "repairs it; requests with store: false still work", retry_after=30)

    def _log_failure(self, failure: StoreUnavailableError, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._logged.get(failure.message, -_LOG_INTERVAL) >= _LOG_INTERVAL:
            self._logged[failure.message] = now
            log.warning("store: %s: %s (%s)", self.path, failure.message, exc)

    def _startup_check(self) -> None:
        """Open the file, bring its schema up to date and run SQLite's quick check; say what is wrong."""
        if not self.path.exists() and not self.path.is_symlink():
            return  # made on the first stored response
        try:
            with closing(db.connect(str(self.path), self.limits.timeout, create=False)) as conn:
                db.ensure_schema(conn)
                self._schema_ready = True
                verdict, count = db.integrity(conn)
        except (sqlite3.Error, OSError) as exc:
            log.error("store: %s: %s (%s)", self.path, self._failure(exc).message, exc)
            return
        if verdict != "ok":
            log.error("store: %s fails SQLite's integrity check (%s): stored responses may be lost; move the file "
                      "aside to start a new store", self.path, verdict)
        else:
            log.info("store: %s holds %d responses", self.path, count)


def _is_lock(exc: BaseException) -> bool:
    """Another connection holds the lock (SQLITE_BUSY, SQLITE_LOCKED and their extended codes)."""
    return str(getattr(exc, "sqlite_errorname", "") or "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def _too_large(size: int, most: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"this response would store {size} bytes (its input items, the request's fields and the output), more than "
        f"responses_max_stored_bytes ({most}): send less, or set store: false", param="input",
        code="response_too_large")
