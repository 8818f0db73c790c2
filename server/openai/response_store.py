"""Stored responses (`store: true`): one SQLite file in the state directory, kept for GET, DELETE and
`previous_response_id`, pruned by age and count on every write.

Each call opens its own connection in a worker thread (`asyncio.to_thread`): SQLite never runs on
the event loop, and threads share no connection. The file's path comes from the settings alone;
a response id is only ever a bound SQL parameter.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE_NAME = "responses.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    stored_at REAL NOT NULL,
    response TEXT NOT NULL,
    input TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_age ON responses (stored_at);
"""


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]  # the response object as it was answered
    input: list[dict[str, Any]]  # every input item it ran on, earlier turns' included (not instructions)


class ResponseStore:
    """The responses kept under `state_dir`; the file is created on the first write."""

    def __init__(self, state_dir: Path, max_age_seconds: float, max_count: int) -> None:
        self.path = state_dir / FILE_NAME
        self.max_age = max_age_seconds
        self.max_count = max_count

    async def put(self, response: dict[str, Any], input_items: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(self._put, response, input_items)

    async def get(self, response_id: str) -> StoredResponse | None:
        return await asyncio.to_thread(self._get, response_id)

    async def delete(self, response_id: str) -> bool:
        return await asyncio.to_thread(self._delete, response_id)

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        """A connection to the file; None when there is no file yet and `create` is false."""
        if not create and not self.path.exists():
            return None
        new = not self.path.exists()
        if new:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Conversations are private: the file (and SQLite's -wal and -shm files, which copy its
            # mode) is for the server's user alone.
            self.path.touch(mode=0o600)
        conn = sqlite3.connect(self.path, timeout=10.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
        return conn

    def _put(self, response: dict[str, Any], input_items: list[dict[str, Any]]) -> None:
        now = time.time()
        conn = self._connect(create=True)
        assert conn is not None
        with closing(conn), conn:
            conn.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                         (response["id"], now, json.dumps(response), json.dumps(input_items)))
            # Pruned here, so the file stays bounded without a timer of its own.
            conn.execute("DELETE FROM responses WHERE stored_at < ?", (now - self.max_age,))
            conn.execute("DELETE FROM responses WHERE rowid NOT IN "
                         "(SELECT rowid FROM responses ORDER BY stored_at DESC, rowid DESC LIMIT ?)",
                         (self.max_count,))

    def _get(self, response_id: str) -> StoredResponse | None:
        conn = self._connect(create=False)
        if conn is None:
            return None
        with closing(conn):
            row = conn.execute("SELECT response, input FROM responses WHERE id = ? AND stored_at >= ?",
                               (response_id, time.time() - self.max_age)).fetchone()
        return StoredResponse(json.loads(row[0]), json.loads(row[1])) if row else None

    def _delete(self, response_id: str) -> bool:
        conn = self._connect(create=False)
        if conn is None:
            return False
        with closing(conn), conn:
            return conn.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0
