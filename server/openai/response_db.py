"""The Responses store's SQLite schema and queries: one row per response, linked to the one it continues.

Every function here runs on the store's own threads (response_store.py) with a connection of its
own; nothing here touches the event loop. A row holds its own input items and the response object
once; a conversation is read back by walking `previous_id` links, so a chain of n turns costs n
rows, not n² items.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequestError

log = logging.getLogger("nomoat.store")  # the store's subsystem name: tests/test_response_store.py filters on it

_TABLE = "responses"
# The format before rows were linked (each row held its whole history): set aside, never read.
_OLD_TABLE = "responses_v1"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_TABLE} (
    id TEXT PRIMARY KEY,
    owner TEXT,              -- the creating key's id (auth.key_id), NULL where no key was in use
    previous_id TEXT,        -- the response this one continues
    stored_at REAL NOT NULL,
    depth INTEGER NOT NULL,  -- responses in its chain, itself included
    chain_bytes INTEGER NOT NULL,  -- bytes of its chain, itself included
    size INTEGER NOT NULL,   -- bytes of `response` and `input`
    deleted INTEGER NOT NULL DEFAULT 0,  -- DELETEd, kept only while a later response continues it
    response TEXT NOT NULL,  -- the response object as answered
    input TEXT NOT NULL      -- its own input items (earlier turns' live in earlier rows)
);
CREATE INDEX IF NOT EXISTS {_TABLE}_by_age ON {_TABLE} (stored_at, size);
CREATE INDEX IF NOT EXISTS {_TABLE}_by_previous ON {_TABLE} (previous_id);
"""
# The row a caller may see: its id, young enough, not deleted, theirs (or they see all).
_VISIBLE = "id = ? AND stored_at >= ? AND NOT deleted AND (? OR owner IS ?)"


@dataclass(frozen=True)
class Viewer:
    """Who asks: the key's id (None where no key is in use) and whether it is an admin key."""

    key_id: str | None = None
    admin: bool = False

    @property
    def sees_all(self) -> bool:
        """Admins see every response; with no key in use (an open API) so does everyone, as before owners."""
        return self.admin or self.key_id is None


@dataclass(frozen=True)
class Head:
    """What a continuation needs to know of the response it continues, before reading its chain."""

    id: str
    depth: int
    chain_bytes: int


@dataclass(frozen=True)
class Turn:
    """One stored response of a chain: its own input items and its output items."""

    id: str
    input: list[dict[str, Any]]
    output: list[dict[str, Any]]


@dataclass(frozen=True)
class Encoded:
    """A response and its input items as the JSON text a row holds."""

    response: str
    input: str

    @property
    def size(self) -> int:
        return len(self.response.encode()) + len(self.input.encode())


def encode(response: dict[str, Any], items: list[dict[str, Any]]) -> Encoded:
    """The row's JSON; a non-finite number (NaN, Infinity) is refused, so every row reads back as JSON."""
    try:
        return Encoded(_dumps(response), _dumps(items))
    except ValueError:
        raise InvalidRequestError(
            "the request holds a non-finite number (NaN or Infinity), which JSON cannot carry: "
            f"{_nonfinite_path(response) or _nonfinite_path(items) or 'somewhere in it'}",
            code="invalid_value") from None


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _nonfinite_path(value: Any, where: str = "") -> str | None:
    """Where the first NaN or Infinity sits (`tools[0].parameters.x`), for the 400's message."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "the body"
    children: Iterator[tuple[str, Any]] = iter(())
    if isinstance(value, dict):
        children = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        children = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    for path, child in children:
        found = _nonfinite_path(child, path)
        if found is not None:
            return found
    return None


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the table (WAL mode, so readers never wait on a writer); set an old-format table aside."""
    conn.execute("PRAGMA journal_mode=WAL")
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({_TABLE})")}
        if columns and "previous_id" not in columns:
            count = conn.execute(f"SELECT COUNT(*) FROM {_TABLE}").fetchone()[0]
            conn.execute(f"DROP TABLE IF EXISTS {_OLD_TABLE}")
            conn.execute(f"DROP INDEX IF EXISTS {_TABLE}_by_age")
            conn.execute(f"ALTER TABLE {_TABLE} RENAME TO {_OLD_TABLE}")
            log.warning("store: %d responses kept by an older nomoat (one row per whole conversation) were set "
                        "aside in table %s and are no longer served; new responses use the linked format (to "
                        "reclaim the space: sqlite3 FILE 'DROP TABLE %s; VACUUM')", count, _OLD_TABLE, _OLD_TABLE)
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)


def integrity(conn: sqlite3.Connection) -> tuple[str, int]:
    """SQLite's quick check ("ok" when sound) and the number of stored responses."""
    verdict = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
    return str(verdict), conn.execute(f"SELECT COUNT(*) FROM {_TABLE}").fetchone()[0]


def _visible(response_id: str, viewer: Viewer, since: float) -> tuple[Any, ...]:
    return response_id, since, viewer.sees_all, viewer.key_id


def head(conn: sqlite3.Connection, response_id: str, viewer: Viewer, since: float) -> Head | None:
    """The response if `viewer` may see it and it is younger than `since` (a timestamp)."""
    row = conn.execute(f"SELECT id, depth, chain_bytes FROM {_TABLE} WHERE {_VISIBLE}",
                       _visible(response_id, viewer, since)).fetchone()
    return Head(row[0], row[1], row[2]) if row else None


def response(conn: sqlite3.Connection, response_id: str, viewer: Viewer, since: float) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT response FROM {_TABLE} WHERE {_VISIBLE}", _visible(response_id, viewer, since)).fetchone()
    return json.loads(row[0]) if row else None


def chain(conn: sqlite3.Connection, start: Head) -> tuple[list[Turn], str | None]:
    """The turns from the conversation's first to `start`, and the id of a missing earlier response (None
    when the chain is whole). At most `start.depth` rows are read."""
    rows = conn.execute(f"""
        WITH RECURSIVE walk(n, id, previous_id, input, output) AS (
            SELECT 0, id, previous_id, input, json_extract(response, '$.output') FROM {_TABLE} WHERE id = ?
            UNION ALL
            SELECT walk.n + 1, r.id, r.previous_id, r.input, json_extract(r.response, '$.output')
            FROM {_TABLE} r JOIN walk ON r.id = walk.previous_id WHERE walk.n + 1 < ?
        ) SELECT id, previous_id, input, output FROM walk ORDER BY n DESC""", (start.id, start.depth)).fetchall()
    missing = rows[0][1] if rows else start.id
    return [Turn(row[0], json.loads(row[2]), json.loads(row[3])) for row in rows], missing


def put(conn: sqlite3.Connection, response_id: str, owner: str | None, previous_id: str | None,
        encoded: Encoded, now: float) -> None:
    """Insert one response; its depth and chain size follow from the row it continues."""
    with conn:
        above = None
        if previous_id is not None:
            above = conn.execute(f"SELECT depth, chain_bytes FROM {_TABLE} WHERE id = ?", (previous_id,)).fetchone()
        depth, chain_bytes = (above[0] + 1, above[1] + encoded.size) if above else (1, encoded.size)
        conn.execute(f"INSERT OR REPLACE INTO {_TABLE} (id, owner, previous_id, stored_at, depth, chain_bytes, size, "
                     "response, input) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (response_id, owner, previous_id, now, depth, chain_bytes, encoded.size,
                      encoded.response, encoded.input))


def delete(conn: sqlite3.Connection, response_id: str, viewer: Viewer, since: float) -> bool:
    """Remove a response. One a later response continues is only marked: that conversation still holds its
    items (as when every row held its whole history); it goes with the last response that needs it."""
    with conn:
        if not conn.execute(f"UPDATE {_TABLE} SET deleted = 1 WHERE {_VISIBLE}",
                            _visible(response_id, viewer, since)).rowcount:
            return False
        gone: str | None = response_id
        while gone is not None:  # up the chain, at most its depth
            row = conn.execute(f"SELECT previous_id FROM {_TABLE} WHERE id = ? AND deleted AND NOT EXISTS "
                               f"(SELECT 1 FROM {_TABLE} c WHERE c.previous_id = ?)", (gone, gone)).fetchone()
            if row is None:
                break
            conn.execute(f"DELETE FROM {_TABLE} WHERE id = ?", (gone,))
            gone = row[0]
    return True


@dataclass(frozen=True)
class Retention:
    max_age: float
    max_count: int
    max_bytes: int


def over_limits(conn: sqlite3.Connection, keep: Retention) -> bool:
    """Whether the store holds more than `keep` allows in count or bytes (one pass over an index)."""
    count, total = conn.execute(f"SELECT COUNT(*), TOTAL(size) FROM {_TABLE}").fetchone()
    return bool(count > keep.max_count or total > keep.max_bytes)


def prune(conn: sqlite3.Connection, keep: Retention, now: float, spare: str) -> int:
    """Drop what `keep` no longer allows; returns how many rows went.

    By age: a response older than max_age (or deleted) goes unless a younger one continues it (it holds that
    one's conversation). By count and bytes: the oldest go first, `spare` (the row just written) never.
    """
    cutoff = now - keep.max_age
    with conn:
        changes = conn.total_changes  # (a DELETE that starts WITH has no rowcount)
        conn.execute(f"""
            WITH RECURSIVE needed(id) AS (
                SELECT previous_id FROM {_TABLE} WHERE stored_at >= ? AND NOT deleted AND previous_id IS NOT NULL
                UNION
                SELECT r.previous_id FROM {_TABLE} r JOIN needed ON r.id = needed.id WHERE r.previous_id IS NOT NULL
            ) DELETE FROM {_TABLE} WHERE (stored_at < ? OR deleted) AND id NOT IN (SELECT id FROM needed)""",
                     (cutoff, cutoff))
        gone = conn.total_changes - changes
        count, total = conn.execute(f"SELECT COUNT(*), TOTAL(size) FROM {_TABLE}").fetchone()
        doomed = []
        for response_id, size in conn.execute(f"SELECT id, size FROM {_TABLE} ORDER BY stored_at, rowid"):
            if count <= keep.max_count and total <= keep.max_bytes:
                break
            if response_id == spare:
                continue
            doomed.append((response_id,))
            count, total = count - 1, total - size
        conn.executemany(f"DELETE FROM {_TABLE} WHERE id = ?", doomed)
    return gone + len(doomed)


def connect(path: str, timeout: float, create: bool) -> sqlite3.Connection:
    """A connection that waits at most `timeout` seconds for another's lock; `create` makes the file."""
    uri = f"file:{_quote(path)}?mode={'rwc' if create else 'rw'}"
    return sqlite3.connect(uri, uri=True, timeout=timeout)


def _quote(path: str) -> str:
    # A URI filename: `?` and `#` in a directory name would otherwise start its query or fragment.
    return path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
