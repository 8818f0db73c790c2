"""The prompt cache's disk tier: KV states of token prefixes in files under the state dir, kept across unloads
and restarts, written by one thread off the engine step, verified before a state is handed back."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import struct
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

# File layout: preamble (magic, format version, header length), a JSON header, the tokens (int32 little-endian),
# then the state. The header's checksum covers the tokens and the state: a flipped token would otherwise restore
# a state under a prefix it does not belong to.
MAGIC = b"NOMOATPC"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<8sII")
# A header holds the identity and the build strings; past this the file is not one of ours.
_MAX_HEADER = 64 * 1024
SUFFIX = ".state"
_TEMP_PREFIX = ".tmp-"
# Below this a prefix prefills in about as long as a file takes to open, read and check: not worth a file.
MIN_TOKENS = 64
# Saves waiting for the writer, bounded in count and bytes (a state is tens to hundreds of MB, held alive while
# queued): room for a default RAM tier (256 MiB) drained whole at an unload.
QUEUE_SIZE = 64
QUEUE_BYTES = 512 * 1024**2
CLOSE_TIMEOUT = 10.0


@dataclass(frozen=True)
class DiskHit:
    """A stored state whose first `matched` tokens agree with the request. The state covers `n_tokens` tokens:
    when `matched < n_tokens` the caller drops positions from `matched` on after restoring it."""

    identity: str
    path: Path
    n_tokens: int
    matched: int
    state_bytes: int


@dataclass(frozen=True)
class DiskStats:
    entries: int
    bytes: int
    hits: int
    misses: int
    dropped: int  # saves refused: the queue full, the state past the budget, or the tier closed
    saved: int  # written, or already held by a stored state that continues it
    evicted: int
    rejected: int  # files found corrupt, truncated or foreign, and removed
    write_seconds: float
    read_seconds: float


@dataclass
class _Entry:
    identity: str
    path: Path
    tokens: bytes  # int32 little-endian, compared as bytes (C speed)
    size: int  # the whole file
    state_bytes: int
    used: float  # last save or load; persisted as the file's mtime, so LRU order survives a restart


@dataclass(frozen=True)
class _Save:
    identity: str
    tokens: bytes
    state: bytes


class _Corrupt(Exception):
    """A file that is not a state this tier may restore; the message says why."""


def llama_build() -> str:
    """What a state file is valid for: llama-cpp-python's version, llama.cpp's own, the sequence-state format,
    the backends compiled in (llama_print_system_info) and a hash of libllama itself, since two builds of one
    version (a source install from another commit, a CUDA build) lay a state out differently."""
    import llama_cpp  # the engine's own dependency; imported here so the tier's tests need no model
    from llama_cpp import llama_cpp as lib

    library = Path(lib._lib._name)
    try:
        digest = hashlib.sha256(library.read_bytes()).hexdigest()[:16]
    except OSError:
        digest = "unknown"
    info = lib.llama_print_system_info().decode(errors="replace").strip()
    return (f"llama-cpp-python {llama_cpp.__version__}; llama.cpp {lib.llama_version().decode(errors='replace')}; "
            f"state v{lib.LLAMA_STATE_SEQ_VERSION}; libllama {digest}; {info}")


def _token_bytes(tokens: Sequence[int]) -> bytes:
    return struct.pack(f"<{len(tokens)}i", *tokens)


def _common_tokens(a: bytes, b: bytes) -> int:
    """Length in tokens of the common prefix, by bisection on slice equality (each a C memcmp)."""
    lo, hi = 0, min(len(a), len(b)) // 4
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[: mid * 4] == b[: mid * 4]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass(frozen=True)
class _Header:
    build: str
    identity: str
    n_tokens: int
    state_bytes: int
    crc32: int


def _read_header(f: BinaryIO, size: int) -> tuple[_Header, bytes]:
    """The header and the tokens of an open file of `size` bytes; _Corrupt if they do not hold together."""
    raw = f.read(_PREAMBLE.size)
    if len(raw) < _PREAMBLE.size:
        raise _Corrupt("shorter than a header")
    magic, version, header_len = _PREAMBLE.unpack(raw)
    if magic != MAGIC:
        raise _Corrupt("not a nomoat prompt-cache file")
    if version != FORMAT_VERSION:
        raise _Corrupt(f"format version {version}, this server reads {FORMAT_VERSION}")
    if header_len > _MAX_HEADER:
        raise _Corrupt("header too long")
    try:
        fields = json.loads(f.read(header_len))
        header = _Header(str(fields["build"]), str(fields["identity"]), int(fields["n_tokens"]),
                         int(fields["state_bytes"]), int(fields["crc32"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise _Corrupt(f"unreadable header ({exc!r})") from None
    expected = _PREAMBLE.size + header_len + 4 * header.n_tokens + header.state_bytes
    if size != expected:
        raise _Corrupt(f"{size} bytes where its header says {expected} (truncated?)")
    return header, f.read(4 * header.n_tokens)


class DiskTier:
    """States of token prefixes under `root`, at most `budget_bytes` of files, for one llama.cpp `build`.

    The index (identity → entries) lives in memory, built at startup from the files' headers; the engine asks
    it (`best`) without touching the disk, reads a state (`load`) only on a hit, and hands states to `save`,
    which queues them for the writer thread and returns at once. The lock guards the index only, never I/O."""

    def __init__(self, root: Path, budget_bytes: int, build: str, *, min_tokens: int = MIN_TOKENS,
                 queue_size: int = QUEUE_SIZE, queue_bytes: int = QUEUE_BYTES) -> None:
        self.root, self.budget, self.build, self.min_tokens = root, budget_bytes, build, min_tokens
        self._queue_bytes_max = queue_bytes
        self._lock = threading.Lock()
        self._entries: dict[Path, _Entry] = {}
        self._total = 0
        self._pending = 0
        self._counts = dict.fromkeys(("hits", "misses", "dropped", "saved", "evicted", "rejected"), 0)
        self._write_s = self._read_s = 0.0
        self._closed = False
        self._clock = 0.0
        self._queue: queue.Queue[_Save | None] = queue.Queue(queue_size)
        root.mkdir(parents=True, exist_ok=True)
        self._scan()
        self._evict()
        self._writer = threading.Thread(target=self._write_loop, name="prompt-cache-disk", daemon=True)
        self._writer.start()

    # -- the engine's side: never blocks on I/O except load, which the caller chose to pay

    def save(self, identity: str, tokens: Sequence[int], state: bytes) -> None:
        """Queue a state for the writer; dropped (and counted) when the queue is full, the state alone is past
        the budget, the prefix is too short to be worth a file, or the tier is closed."""
        if len(tokens) < self.min_tokens:
            return
        packed = _token_bytes(tokens)
        with self._lock:
            room = self._pending == 0 or self._pending + len(state) <= self._queue_bytes_max
            # Only savers put, under this lock (close() marks the tier closed first): not full stays not full.
            if self._closed or not room or len(state) > self.budget or self._queue.full():
                self._counts["dropped"] += 1
                return
            self._queue.put_nowait(_Save(identity, packed, state))
            self._pending += len(state)

    def best(self, identity: str, tokens: Sequence[int]) -> DiskHit | None:
        """The stored state sharing the longest prefix with `tokens` under `identity` (at least min_tokens),
        from the index alone; ties go to the smaller file."""
        wanted = _token_bytes(tokens)
        with self._lock:
            candidates = [e for e in self._entries.values() if e.identity == identity]
        found: tuple[int, int, _Entry] | None = None
        for entry in candidates:
            matched = _common_tokens(entry.tokens, wanted)
            if matched >= self.min_tokens and (found is None or (matched, -entry.size) > found[:2]):
                found = (matched, -entry.size, entry)
        with self._lock:
            self._counts["hits" if found else "misses"] += 1
        if found is None:
            return None
        entry = found[2]
        return DiskHit(identity, entry.path, len(entry.tokens) // 4, found[0], entry.state_bytes)

    def load(self, hit: DiskHit) -> bytes | None:
        """The state of `hit`, verified (format, build, identity, tokens, length, CRC-32); None when the file
        is gone, and None with one log line (the file removed) when it is corrupt, truncated or foreign."""
        started = time.perf_counter()
        with self._lock:
            entry = self._entries.get(hit.path)
        try:
            with open(hit.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                header, tokens = _read_header(f, size)
                if header.build != self.build:
                    raise _Corrupt(f"written by another llama.cpp build ({header.build})")
                if header.identity != hit.identity:
                    raise _Corrupt("written for another model, adapter set or cache type")
                if entry is not None and tokens != entry.tokens:
                    raise _Corrupt("its tokens changed since it was indexed")
                state = f.read()
            if len(state) != header.state_bytes or zlib.crc32(state, zlib.crc32(tokens)) != header.crc32:
                raise _Corrupt("checksum mismatch")
        except FileNotFoundError:
            self._forget(hit.path)
            return None
        except (_Corrupt, OSError) as exc:
            self._reject(hit.path, str(exc))
            return None
        with self._lock:
            now = self._now()
            if entry is not None:
                entry.used = now
        with contextlib.suppress(OSError):
            os.utime(hit.path, (now, now))
        with self._lock:
            self._read_s += time.perf_counter() - started
        return state

    def stats(self) -> DiskStats:
        with self._lock:
            return DiskStats(len(self._entries), self._total, write_seconds=self._write_s,
                             read_seconds=self._read_s, **self._counts)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop taking saves and let the writer finish what is queued, waiting at most `timeout` seconds."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    log.warning("prompt cache: the disk writer did not drain in %.0f s; queued states are lost",
                                timeout)
                    return
        self._writer.join(max(0.0, deadline - time.monotonic()))

    # -- the writer thread and the index

    def _write_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._write(item)
            except OSError as exc:
                log.warning("prompt cache: could not write a state to %s: %s", self.root, exc)
            finally:
                with self._lock:
                    self._pending -= len(item.state)

    def _write(self, item: _Save) -> None:
        with self._lock:
            covered = [e for e in self._entries.values()
                       if e.identity == item.identity and e.tokens.startswith(item.tokens)]
            for entry in covered:
                entry.used = self._now()
            self._counts["saved"] += bool(covered)
        if covered:
            return  # a state already stored continues this one: it serves every prompt this one would
        started = time.perf_counter()
        name = hashlib.sha256(item.identity.encode() + b"\0" + item.tokens).hexdigest()[:40] + SUFFIX
        path = self.root / name
        header = json.dumps({"build": self.build, "identity": item.identity, "n_tokens": len(item.tokens) // 4,
                             "state_bytes": len(item.state),
                             "crc32": zlib.crc32(item.state, zlib.crc32(item.tokens))}).encode()
        temp = self.root / f"{_TEMP_PREFIX}{os.getpid()}-{name}"
        # No fsync: a file cut short by a power loss fails its length or checksum on load and is removed.
        try:
            with open(temp, "wb") as f:
                for part in (_PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header)), header, item.tokens, item.state):
                    f.write(part)
                size = f.tell()
            os.replace(temp, path)
        except OSError:
            self._unlink([temp])  # a full disk leaves no half file behind either
            raise
        with self._lock:
            old = self._entries.pop(path, None)
            self._total -= old.size if old else 0
            self._entries[path] = _Entry(item.identity, path, item.tokens, size, len(item.state), self._now())
            self._total += size
            self._counts["saved"] += 1
            self._write_s += time.perf_counter() - started
            # States this one continues are superseded: a prompt they matched matches this one as far.
            superseded = [self._entries.pop(e.path) for e in list(self._entries.values())
                          if e.identity == item.identity and e.path != path and item.tokens.startswith(e.tokens)]
            self._total -= sum(e.size for e in superseded)
        self._unlink([e.path for e in superseded])
        self._evict(keep=path)

    def _evict(self, keep: Path | None = None) -> None:
        """Remove least recently used files until the total is under the budget (never `keep`, just written)."""
        with self._lock:
            victims = []
            for entry in sorted(self._entries.values(), key=lambda e: e.used):
                if self._total <= self.budget:
                    break
                if entry.path != keep:
                    victims.append(self._entries.pop(entry.path))
                    self._total -= entry.size
                    self._counts["evicted"] += 1
        self._unlink([e.path for e in victims])

    @staticmethod
    def _unlink(paths: list[Path]) -> None:
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink()

    def _scan(self) -> None:
        """Index the folder's files from their headers (no state read); remove what a crash or another build
        left behind: temp files of dead processes, unreadable files, another build's states."""
        foreign = 0
        for path in self.root.iterdir():
            if path.name.startswith(_TEMP_PREFIX):
                self._remove_stale_temp(path)
                continue
            if path.suffix != SUFFIX:
                continue
            try:
                with open(path, "rb") as f:
                    stat = os.fstat(f.fileno())
                    header, tokens = _read_header(f, stat.st_size)
            except (_Corrupt, OSError) as exc:
                self._reject(path, str(exc))
                continue
            if header.build != self.build:
                foreign += 1
                self._unlink([path])
                continue
            entry = _Entry(header.identity, path, tokens, stat.st_size, header.state_bytes, stat.st_mtime)
            self._entries[path] = entry
            self._total += entry.size
            self._clock = max(self._clock, stat.st_mtime)
        if foreign:
            log.info("prompt cache: removed %d states written by another llama.cpp build", foreign)

    def _remove_stale_temp(self, path: Path) -> None:
        """A temp file whose writer died mid-write goes; a live writer's (another server here) stays."""
        try:
            os.kill(int(path.name[len(_TEMP_PREFIX):].split("-", 1)[0]), 0)
        except (ValueError, ProcessLookupError):
            self._unlink([path])
        except PermissionError:
            pass  # alive, another user's

    def _now(self) -> float:
        """The wall clock, strictly increasing, so two uses in one clock tick still order for LRU (under the lock)."""
        self._clock = max(time.time(), self._clock + 1e-6)
        return self._clock

    def _forget(self, path: Path) -> None:
        with self._lock:
            entry = self._entries.pop(path, None)
            self._total -= entry.size if entry else 0

    def _reject(self, path: Path, why: str) -> None:
        log.warning("prompt cache: skipped %s: %s; removed", path.name, why)
        self._forget(path)
        with self._lock:
            self._counts["rejected"] += 1
        self._unlink([path])
