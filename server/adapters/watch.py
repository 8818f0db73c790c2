"""Drop-in adapters: GGUF files and PEFT directories that appear in an adapter directory are served by name."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import watchfiles

from ..errors import AdapterError, NomoatError
from ..tasks import Supervisor
from .catalogue import AdapterCatalogue
from .entries import AdapterEntry
from .gguf_check import TruncatedGGUFError, check_gguf_layout
from .peft import CONFIG_NAME, PICKLE_WEIGHTS_NAME, WEIGHTS_NAME, read_config_json
from .regular_files import open_regular

log = logging.getLogger(__name__)

ORIGIN: Final = "watch"
# A file must keep its size and mtime this long before it is read: most copies finish well within it,
# and the header checks below catch a writer that pauses longer.
SETTLE_SECONDS = 0.25
_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit

Signature = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class Readiness:
    """Whether an entry can be loaded now: `incomplete` waits for the next change, `bad` is skipped."""

    state: Literal["ready", "incomplete", "bad"]
    reason: str = ""


READY = Readiness("ready")


def signature(entry: Path) -> Signature | None:
    """Name, size and mtime of the entry (a file) or of the files directly in it (a directory); None if gone."""
    try:
        if entry.is_dir():
            with os.scandir(entry) as it:
                files = [(e.name, e.stat()) for e in it if e.is_file()]
            return tuple(sorted((name, st.st_size, st.st_mtime_ns) for name, st in files))
        st = entry.stat()
    except OSError:
        return None
    return (("", st.st_size, st.st_mtime_ns),)


def gguf_readiness(path: Path) -> Readiness:
    try:
        with open_regular(path) as stream:
            # Checks every count against the file and that each tensor's data is in it, so a file cut
            # anywhere, header or data, is incomplete; a header no file could satisfy is bad.
            check_gguf_layout(stream, path)
    except TruncatedGGUFError as exc:  # the log line names the file already
        return Readiness("incomplete", exc.message.removeprefix(f"{path}: "))
    except AdapterError as exc:  # not a regular file, not a GGUF, or impossible counts
        return Readiness("bad", exc.message.removeprefix(f"{path}: "))
    except OSError as exc:
        return Readiness("incomplete", f"cannot be read yet ({exc.strerror})")
    return READY


def safetensors_readiness(path: Path) -> Readiness:
    """Complete when the file holds its whole JSON header and every byte the header points at."""
    try:
        with open_regular(path) as stream:
            size = os.fstat(stream.fileno()).st_size
            prefix = stream.read(8)
            if len(prefix) < 8:
                return Readiness("incomplete", f"{path.name} has no header yet")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > _SAFETENSORS_MAX_HEADER:
                return Readiness("bad", f"{path.name} is not a safetensors file (header length {header_len})")
            if size < 8 + header_len:
                return Readiness("incomplete", f"{path.name} header not complete yet")
            header = json.loads(stream.read(header_len))
    except AdapterError as exc:
        return Readiness("bad", exc.message)
    except OSError as exc:
        return Readiness("incomplete", f"{path.name} cannot be read yet ({exc.strerror})")
    except (ValueError, RecursionError):
        return Readiness("bad", f"{path.name} has a header that is not JSON")
    if not isinstance(header, dict):
        return Readiness("bad", f"{path.name} has a header that is not a JSON object")
    ends = [e["data_offsets"][1] for k, e in header.items()
            if k != "__metadata__" and isinstance(e, dict) and isinstance(e.get("data_offsets"), list)
            and len(e["data_offsets"]) == 2 and isinstance(e["data_offsets"][1], int)]
    if size < 8 + header_len + max(ends, default=0):
        return Readiness("incomplete", f"{path.name} data not complete yet")
    return READY


def peft_readiness(directory: Path) -> Readiness:
    try:
        read_config_json(directory / CONFIG_NAME)
    except FileNotFoundError:
        return Readiness("incomplete", f"no {CONFIG_NAME} yet")
    except AdapterError as exc:  # not a regular file, too large, nested too deeply
        return Readiness("bad", exc.message)
    except (OSError, ValueError):
        return Readiness("incomplete", f"{CONFIG_NAME} not complete yet")
    weights = directory / WEIGHTS_NAME
    if weights.exists():
        return safetensors_readiness(weights)
    if (directory / PICKLE_WEIGHTS_NAME).exists():
        return READY  # loading refuses it with the reason; the user should hear it
    return Readiness("incomplete", f"no {WEIGHTS_NAME} yet")


def entry_readiness(entry: Path) -> Readiness:
    """Whether a drop-in entry, a PEFT directory or a GGUF file, can be loaded now."""
    return peft_readiness(entry) if entry.is_dir() else gguf_readiness(entry)


def _name_and_source(entry: Path) -> tuple[str, Path]:
    """The adapter's name (a file's stem, a directory's name) and the real path it is read from."""
    return (entry.stem if entry.is_file() else entry.name), Path(os.path.realpath(entry))


@dataclass(frozen=True)
class _Served:
    name: str
    source: Path
    signature: Signature


class AdapterWatcher:
    """Watches adapter directories and keeps the adapters it loaded in step with what is on disk.

    Each top-level entry of a directory (`NAME.gguf`, or a PEFT directory `NAME/`) is one candidate;
    a change anywhere below it re-checks that candidate, one check at a time per candidate. Only
    adapters this watcher loaded (origin "watch") are ever replaced or unloaded by it. A changed
    file replaces its adapter in one step once the new content is complete; until then the old
    content serves.
    """

    def __init__(self, catalogue: AdapterCatalogue, directories: list[Path],
                 settle_seconds: float = SETTLE_SECONDS) -> None:
        self._catalogue = catalogue
        self._roots = [Path(os.path.realpath(d)) for d in directories]
        self._settle = settle_seconds
        self._served: dict[Path, _Served] = {}
        self._failed: dict[Path, Signature] = {}
        self._noted: dict[Path, object] = {}  # the last thing logged per entry, so nothing repeats
        self._dirty: set[Path] = set()
        self._workers: dict[Path, asyncio.Task[None]] = {}  # one check at a time per candidate
        self._stop = asyncio.Event()
        self._tasks = Supervisor()  # the directory watch and the workers
        self._stop_hearing_drops: Callable[[], None] | None = None

    async def start(self) -> None:
        roots, entries = [], []
        for root in self._roots:
            try:
                entries += sorted(root.iterdir())
                roots.append(root)
            except OSError as exc:
                log.warning("not watching %s: %s", root, exc.strerror or exc)
        if not roots:
            log.warning("watch_adapters is on but there is no adapter directory to watch (--adapter-dir)")
            return
        self._roots = roots
        # watchfiles logs every batch of changes at INFO; this module logs what they lead to instead.
        logging.getLogger("watchfiles").setLevel(logging.WARNING)
        log.info("watching %s for adapters", ", ".join(map(str, roots)))
        self._stop_hearing_drops = self._catalogue.on_dropped(self._dropped)
        for entry in entries:
            self._touch(entry)
        self._tasks.spawn(self._watch(), name="adapter-watch")

    async def stop(self) -> None:
        self._stop.set()
        if self._stop_hearing_drops is not None:
            self._stop_hearing_drops()
        # The stop event ends the watch and each worker after its current check; one still busy after
        # this long (a slow PEFT conversion) is cancelled.
        if self._tasks.active:
            await asyncio.wait(self._tasks.active, timeout=5)
        await self._tasks.aclose()

    async def _watch(self) -> None:
        try:
            async for changes in watchfiles.awatch(*self._roots, stop_event=self._stop, step=50, debounce=400):
                for _, changed in changes:
                    entry = self._entry_of(Path(changed))
                    if entry is not None:
                        self._touch(entry)
        except Exception:  # the server goes on without drop-in loading rather than dying
            log.exception("adapter directory watcher failed; drop-in loading is off")

    def _entry_of(self, changed: Path) -> Path | None:
        for root in self._roots:
            if root in changed.parents:
                return root / changed.relative_to(root).parts[0]
        return None

    def _touch(self, entry: Path) -> None:
        if entry.name.startswith("."):  # editors' and downloaders' temporary files
            return
        self._dirty.add(entry)
        if entry not in self._workers:
            self._workers[entry] = self._tasks.spawn(self._work(entry), name=f"adapter-watch {entry.name}")

    def _dropped(self, gone: AdapterEntry) -> None:
        """A reload took one of our adapters away (its model went, or it failed to load on the new one):
        forget it and check its entry again, which loads it on whatever model is the default now."""
        if gone.origin != ORIGIN:
            return
        for entry, served in list(self._served.items()):
            if served.name == gone.name and served.source == gone.adapter.source:
                del self._served[entry]
                self._touch(entry)

    async def _work(self, entry: Path) -> None:
        try:
            while entry in self._dirty and not self._stop.is_set():
                self._dirty.discard(entry)
                try:
                    await self._reconcile(entry)
                except Exception:  # one bad entry must never stop the others or the server
                    log.exception("drop-in adapter %s: unexpected error; skipped", entry)
        finally:
            del self._workers[entry]

    async def _settled(self, entry: Path) -> Signature | None:
        sig = signature(entry)
        while sig is not None:
            await asyncio.sleep(self._settle)
            again = signature(entry)
            if again == sig:
                return sig
            sig = again
        return None

    def _escapes(self, entry: Path) -> Path | None:
        """The real path of the entry, or of a PEFT file in it, when it lies outside every watched directory."""
        paths = [entry, entry / CONFIG_NAME, entry / WEIGHTS_NAME, entry / PICKLE_WEIGHTS_NAME] \
            if entry.is_dir() else [entry]
        for path in paths:
            real = Path(os.path.realpath(path))
            if not any(root in real.parents for root in self._roots):
                return real
        return None

    def _inspect(self, entry: Path) -> tuple[bool, Path | None]:
        """Whether the entry could be an adapter, and where it resolves to when that is outside (reads the disk)."""
        is_candidate = entry.is_dir() or (entry.suffix.lower() == ".gguf" and entry.is_file())
        return is_candidate, self._escapes(entry) if is_candidate else None

    async def _reconcile(self, entry: Path) -> None:
        is_candidate, escaped = await asyncio.to_thread(self._inspect, entry)
        if escaped is not None:  # a symlink out: nothing outside the adapter directories is opened
            self._note(entry, ("escapes", escaped), logging.WARNING,
                       "drop-in adapter %s: skipped: it resolves to %s, outside the adapter directories", entry,
                       escaped)
            await self._drop(entry, "replaced by a link out")
            return
        sig = await self._settled(entry) if is_candidate else None
        served = self._served.get(entry)
        if served is not None and served.signature == sig:
            return
        if sig is None:
            await self._drop(entry, "removed")
            self._noted.pop(entry, None)
            self._failed.pop(entry, None)
            return
        if self._failed.get(entry) == sig:
            return
        ready = await asyncio.to_thread(entry_readiness, entry)
        if ready.state == "incomplete":  # an adapter it served before serves on meanwhile
            self._note(entry, "incomplete", logging.INFO, "drop-in adapter %s: waiting (%s)", entry, ready.reason)
            return
        if ready.state == "bad":
            await self._reject(entry, sig, ready.reason)
            return
        await self._load(entry, sig)

    async def _load(self, entry: Path, sig: Signature) -> None:
        name, source = await asyncio.to_thread(_name_and_source, entry)
        if any(ch.isspace() for ch in name):
            await self._reject(entry, sig, f"its name {name!r} contains whitespace, which a model id cannot")
            return
        for other in self._catalogue.entries():
            if other.adapter.source == source and other.origin != ORIGIN:
                self._note(entry, ("served", sig), logging.INFO,
                           "drop-in adapter %s: already served as %r (origin %s)", entry, other.name, other.origin)
                return
        served = self._served.get(entry)
        replace = served is not None and self._owns(served)
        try:
            await self._catalogue.load(name, source, None, 1.0, origin=ORIGIN, replace=replace)
        except NomoatError as exc:
            await self._reject(entry, sig, exc.message)
            return
        self._served[entry] = _Served(name, source, sig)
        self._failed.pop(entry, None)
        self._noted.pop(entry, None)
        if replace:
            log.info("drop-in adapter %s: changed on disk, replaced", name)

    async def _reject(self, entry: Path, sig: Signature, reason: str) -> None:
        """Skip the entry; an adapter loaded from it before goes too, as its file is no longer what it serves."""
        self._failed[entry] = sig
        self._note(entry, ("bad", sig), logging.WARNING, "drop-in adapter %s: skipped: %s", entry, reason)
        await self._drop(entry, "changed")

    async def _drop(self, entry: Path, why: str) -> None:
        served = self._served.pop(entry, None)
        if served is None or not self._owns(served):
            return  # unloaded through the API meanwhile, perhaps replaced by someone else's adapter
        try:
            await self._catalogue.unload(served.name)
        except NomoatError as exc:
            log.warning("drop-in adapter %s: %s, but it cannot be unloaded: %s", served.name, why, exc.message)
            return
        log.info("drop-in adapter %s: %s on disk, unloaded", served.name, why)

    def _owns(self, served: _Served) -> bool:
        """Whether the name still serves what this watcher loaded for it."""
        current = self._catalogue.get(served.name)
        return current is not None and current.origin == ORIGIN and current.adapter.source == served.source

    def _note(self, entry: Path, key: object, level: int, message: str, *args: object) -> None:
        if self._noted.get(entry) != key:
            self._noted[entry] = key
            log.log(level, message, *args)
