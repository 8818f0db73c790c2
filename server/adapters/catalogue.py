"""The adapter catalogue: LoRA adapters and stacks served by name, loaded, replaced and unloaded at runtime.

Entries outlive their base's residency: while the base is unloaded an entry holds a detached adapter
(checked and hashed, not opened: `ptr` is None), opened again on the base's new engine when it loads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from ..engine.adapters import LoraAdapter
from ..engine.base_info import BaseModelInfo
from ..engine.engine import Engine
from ..errors import ConflictError, InvalidRequestError, ModelNotFoundError, NotFoundError
from ..metrics import Metrics
from ..models_toml import ModelsFile
from ..tasks import Supervisor
from .claims import Claims
from .entries import AdapterEntry, Origin, StackEntry, stacks_of
from .files import prepare_adapter
from .reload_plan import Load, plan

# AdapterEntry and StackEntry live in entries.py; importers of the catalogue get them here too.
__all__ = ["REPLACED_UNLOAD_WAIT_SECONDS", "AdapterCatalogue", "AdapterEntry", "Bases", "DropListener", "Origin",
           "StackEntry"]

log = logging.getLogger(__name__)

# A replaced adapter is unloaded once its engine has no request in flight, so that no request which
# resolved the old adapter just before the swap is refused; under steady traffic, after this long.
REPLACED_UNLOAD_WAIT_SECONDS = 5.0


class Bases(Protocol):
    """What the catalogue needs from the model registry: base names, their files, their engines while loaded."""

    def base_name(self, model_id: str | None) -> str: ...

    def base_path(self, base: str) -> Path: ...

    def engine_of(self, base: str) -> Engine | None: ...

    def hold_engine(self, base: str) -> tuple[Engine | None, Callable[[], None]]: ...

    def is_model_id(self, name: str) -> bool: ...

    def in_child(self, base: str) -> bool: ...


DropListener = Callable[[AdapterEntry], None]


class AdapterCatalogue:
    """Adapters and stacks by name. Loads, replaces and unloads claim their name; lookups never wait.

    A name changes what it points at in one step on the event loop, so a request sees the old
    adapter or the new one, never neither.
    """

    def __init__(self, bases: Bases, cache_dir: Path, metrics: Metrics | None = None,
                 supervisor: Supervisor | None = None) -> None:
        self._bases = bases
        self._cache_dir = cache_dir
        self._metrics = metrics
        self._entries: dict[str, AdapterEntry] = {}
        self._stacks: dict[str, StackEntry] = {}
        # No lock is held across file I/O or llama.cpp: a load or unload claims its name and a reload every
        # name (claims.py), checks and opens with nothing held, and commits in one step on the loop.
        # attach() and detach() claim nothing, so a model load never waits for an adapter's conversion.
        # Lock order: Residency holds no lock (residency/manager.py), so the claims are the only ones on this
        # path; the catalogue never waits for residency while it holds one.
        self._claims = Claims()
        self._attaching: set[str] = set()  # bases whose attach() runs: it opens what is listed meanwhile
        self._drop_listeners: list[DropListener] = []
        self._tasks = supervisor if supervisor is not None else Supervisor()  # unloads of replaced adapters

    # --- lookups -------------------------------------------------------------------

    def get(self, name: str) -> AdapterEntry | None:
        return self._entries.get(name)

    def stack(self, name: str) -> StackEntry | None:
        return self._stacks.get(name)

    def entries(self) -> list[AdapterEntry]:
        return list(self._entries.values())

    def stacks(self) -> list[StackEntry]:
        return list(self._stacks.values())

    def names(self) -> list[str]:
        return [*self._entries, *self._stacks]

    def not_found(self, name: str, base: str, param: str) -> ModelNotFoundError:
        """An unknown adapter's 404, listing the adapters there are on `base`, as the model 404 lists the models."""
        there = ", ".join(sorted(e.name for e in self._entries.values() if e.base == base)) or "none"
        return ModelNotFoundError(f"The adapter '{name}' does not exist. Available on {base}: {there}", param=param)

    def names_on(self, base: str) -> list[str]:
        """The adapters and stacks on one base."""
        return [e.name for e in self._entries.values() if e.base == base] + [
            s.name for s in self._stacks.values() if s.base == base]

    def on_dropped(self, listener: DropListener) -> Callable[[], None]:
        """Tell `listener` of each adapter a reload takes away; returns the call that stops telling it."""
        self._drop_listeners.append(listener)
        return lambda: self._drop_listeners.remove(listener)

    # --- startup -------------------------------------------------------------------

    def load_config(self, models_file: ModelsFile) -> None:
        """Load the adapters and stacks models.toml (and --lora) declares (blocking: off the event loop)."""
        for spec in models_file.adapters:
            base, started = models_file.base_of(spec.base), time.perf_counter()
            lora = self._open(spec.name, Path(spec.path), self._bases.engine_of(base),
                              self._bases.base_path(base)).result()
            self._register(AdapterEntry(spec.name, base, spec.scale, lora, "config", path=spec.path), started)
        self._stacks = stacks_of(models_file)

    # --- runtime -------------------------------------------------------------------

    async def load(self, name: str, source: Path, base: str | None, scale: float, origin: Origin = "api",
                   *, replace: bool = False) -> AdapterEntry:
        """Load `source` as `name` (POST /v1/adapters or a watched directory); the path is confined by the caller.

        With `replace`, an adapter already named so serves until the new one is loaded, then the name
        points at the new one; otherwise the name must be new.
        """
        async with self._claims.name(name):
            old = self._entries.get(name)
            if self._bases.is_model_id(name) or name in self._stacks or (old is not None and not replace):
                hint = "; DELETE it first or load with replace: true" if old is not None else ""
                raise ConflictError(f"the id {name!r} is already in use{hint}", param="name")
            base_name, started = self._bases.base_name(base), time.perf_counter()
            if self._bases.in_child(base_name):
                # Its own process serves it from the models.toml it was started with (server/child.py).
                raise InvalidRequestError(f"{base_name!r} is split across RPC workers and runs in its own process: "
                                          "its adapters come from models.toml (add it there and reload)",
                                          param="base")
            if old is not None and old.base != base_name and self._stack_users(name):
                raise ConflictError(f"adapter {name!r} is used by the stack(s) {', '.join(self._stack_users(name))} "
                                    f"on {old.base!r}; it cannot move to {base_name!r}", param="base")
            lora = await self._open_on(base_name, name, source)
            # From here to the return no await: attach() may have swapped the old entry's handle meanwhile.
            old = self._entries.get(name)
            entry = self._register(AdapterEntry(name, base_name, scale, lora, origin), started)
            if old is not None:
                self._unload_when_idle(self._bases.engine_of(old.base), old.adapter)
                log.info("adapter %s replaced (sha256 %s -> %s)", name, old.adapter.content_hash[:12],
                         lora.content_hash[:12])
            return entry

    async def _open_on(self, base: str, name: str, source: Path) -> LoraAdapter:
        """`source` opened on the base's engine, held loaded meanwhile; detached while the base is not loaded.

        A base that loaded while its adapter was checked detached had its attach() run before this adapter
        was listed, so the adapter is opened on it here; while attach() still runs, it opens it itself.
        """
        engine, release = self._bases.hold_engine(base)
        try:
            future = await asyncio.to_thread(self._open, name, source, engine, self._bases.base_path(base))
            lora = await asyncio.wrap_future(future)
        finally:
            release()
        if lora.ptr is not None or base in self._attaching:
            return lora
        engine, release = self._bases.hold_engine(base)
        try:
            if engine is not None:
                lora = await asyncio.wrap_future(engine.load_adapter(name, source, lora.gguf_path, lora.content_hash))
        finally:
            release()
        return lora

    async def unload(self, name: str) -> AdapterEntry:
        """Runtime unload: new requests stop at once; running ones finish under the adapter."""
        async with self._claims.name(name):
            entry = self._entries.get(name)
            if entry is None:
                there = ", ".join(sorted(self._entries)) or "none"
                raise NotFoundError(f"no adapter named {name!r} (adapters: {there})", param="name")
            users = self._stack_users(name)
            if users:
                raise ConflictError(f"adapter {name!r} is used by the stack(s) {', '.join(users)}", param="name")
            del self._entries[name]
            engine = self._bases.engine_of(entry.base)
            if engine is not None:
                engine.unload_adapter(entry.adapter)
            log.info("unloaded adapter %s from %s", name, entry.base)
            return entry

    # --- reload --------------------------------------------------------------------

    async def reconcile(self, models_file: ModelsFile, engines: Mapping[str, Engine | None], retired: set[str],
                        commit: Callable[[], None]) -> None:
        """Follow a reload: load what the new model set needs, then swap models and adapters in one step.

        `engines` is the new model set (None for a model not loaded), `retired` the model names whose
        engine changes (removed, replaced or newly loaded). models.toml's adapters load where new or
        changed; runtime adapters on a replaced model are loaded again from their files on its new
        engine (detached where it is not loaded), keeping their names. All of it loads
        while the old set serves; `commit()` swaps the models in the same step as the adapters. Old
        adapters on engines that stay are unloaded after the swap; one that fails to load is logged
        and left out, and the drop listeners hear of every runtime adapter that did not come back.

        It claims every name: runtime loads and unloads wait for it, and it for those already running.
        attach() claims nothing; Residency holds its lock across a reload, so no base loads meanwhile.
        """
        async with self._claims.every():
            kept, loads = plan(self._entries, models_file, engines, retired)
            loaded = await asyncio.to_thread(self._load_all, loads)
            entries = {**kept, **{e.name: e for e in loaded}}
            old = self._entries
            commit()
            self._entries, self._stacks = entries, stacks_of(models_file)
            live = {id(e.adapter) for e in entries.values()}
            for entry in old.values():
                if id(entry.adapter) in live or entry.base in retired:
                    continue  # still served, or freed with its retiring engine
                engine = engines.get(entry.base)
                if engine is None:
                    continue  # a detached adapter holds nothing
                if entry.name in entries:
                    self._unload_when_idle(engine, entry.adapter)
                else:
                    engine.unload_adapter(entry.adapter)
            for entry in old.values():
                if entry.name not in entries:
                    log.info("reload: adapter %s removed", entry.name)
                    if entry.origin != "config":
                        for listener in list(self._drop_listeners):
                            listener(entry)

    def _load_all(self, loads: list[Load]) -> list[AdapterEntry]:
        """Load each planned adapter (blocking); one that fails is logged and left out."""
        loaded = []
        for load in loads:
            started = time.perf_counter()
            try:
                lora = self._open(load.name, load.source, load.engine, load.base_path).result()
            except Exception as exc:  # one bad adapter must not take the reloaded models down
                log.error("reload: adapter %s not loaded: %s", load.name, exc)
                continue
            loaded.append(self._observe(load.entry(lora), started))
        return loaded

    # --- shared --------------------------------------------------------------------

    def _open(self, name: str, source: Path, engine: Engine | None,
              base_path: Path) -> concurrent.futures.Future[LoraAdapter]:
        """Check, hash (and convert a PEFT directory) here; load on the base's engine thread, or, with no
        engine (the base is not loaded), a detached adapter to open when it loads."""
        base_info = engine.model.base_info() if engine is not None else BaseModelInfo.from_gguf(base_path)
        gguf_path, digest = prepare_adapter(source, base_info, self._cache_dir)
        if engine is None:
            done: concurrent.futures.Future[LoraAdapter] = concurrent.futures.Future()
            done.set_result(LoraAdapter(name, source, gguf_path, digest))
            return done
        return engine.load_adapter(name, source, gguf_path, digest)

    # --- the base's residency (residency.Hooks) --------------------------------------

    async def attach(self, base: str, engine: Engine) -> None:
        """The base loaded: open its adapters on the new engine, each from its file as checked again now.

        One that no longer opens (its file gone or changed into something the base refuses) is dropped
        and logged, as a reload drops it; the model serves without it.
        """
        self._attaching.add(base)
        try:
            # Until none is left: a runtime load that finishes meanwhile lists its adapter detached (the base
            # is not marked loaded yet) and leaves it to this loop.
            while entries := [e for e in self._entries.values() if e.base == base and e.adapter.ptr is None]:
                path = self._bases.base_path(base)
                opened = await asyncio.to_thread(self._reopen_all, entries, engine, path)
                for entry, result in opened:
                    self._reattach(entry, result, engine)
        finally:
            self._attaching.discard(base)

    def _reattach(self, entry: AdapterEntry, result: LoraAdapter | Exception, engine: Engine) -> None:
        """Commit one adapter attach() opened again, unless a load or unload changed its name meanwhile."""
        if self._entries.get(entry.name) is not entry:
            if isinstance(result, LoraAdapter):
                engine.unload_adapter(result)  # the name points elsewhere now; its new entry is opened next
            return
        if isinstance(result, LoraAdapter):
            if result.content_hash != entry.adapter.content_hash:
                log.warning("adapter %s changed on disk while %s was unloaded (sha256 %s -> %s)", entry.name,
                            entry.base, entry.adapter.content_hash[:12], result.content_hash[:12])
            self._entries[entry.name] = dataclasses.replace(entry, adapter=result)
            return
        log.error("adapter %s dropped: it did not open again on %s: %s", entry.name, entry.base, result)
        del self._entries[entry.name]
        if entry.origin != "config":
            for listener in list(self._drop_listeners):
                listener(entry)

    def _reopen_all(self, entries: list[AdapterEntry], engine: Engine,
                    base_path: Path) -> list[tuple[AdapterEntry, LoraAdapter | Exception]]:
        out: list[tuple[AdapterEntry, LoraAdapter | Exception]] = []
        for entry in entries:
            try:
                out.append((entry, self._open(entry.name, entry.adapter.source, engine, base_path).result()))
            except Exception as exc:  # one adapter must not keep its base from loading
                out.append((entry, exc))
        return out

    def detach(self, base: str) -> None:
        """The base unloaded: its adapters stay listed, detached (their handles went with the model)."""
        for entry in [e for e in self._entries.values() if e.base == base]:
            old = entry.adapter
            self._entries[entry.name] = dataclasses.replace(
                entry, adapter=LoraAdapter(old.name, old.source, old.gguf_path, old.content_hash))

    def _register(self, entry: AdapterEntry, started: float) -> AdapterEntry:
        self._entries[entry.name] = self._observe(entry, started)
        return entry

    def _observe(self, entry: AdapterEntry, started: float) -> AdapterEntry:
        elapsed = time.perf_counter() - started
        if self._metrics is not None:
            self._metrics.adapter_load.labels(entry.base, entry.name).observe(elapsed)
        how = "loaded" if entry.adapter.ptr is not None else "checked (opens when its base loads)"
        log.info("%s adapter %s on %s from %s in %.1f ms (sha256 %s, origin %s)", how, entry.name, entry.base,
                 entry.adapter.source, elapsed * 1000, entry.adapter.content_hash[:12], entry.origin)
        return entry

    def _stack_users(self, name: str) -> list[str]:
        return [s.name for s in self._stacks.values() if any(n == name for n, _ in s.adapters)]

    def _unload_when_idle(self, engine: Engine | None, adapter: LoraAdapter) -> None:
        """Unload a replaced adapter once no request could still be about to use it.

        A request that resolved the old adapter just before the swap is still being admitted
        (tokenized); the engine refuses an unloading adapter at that point, so the unload waits
        until the engine is idle, or REPLACED_UNLOAD_WAIT_SECONDS under steady traffic.
        """
        if engine is None:
            return  # detached: its base is not loaded, there is nothing to free
        async def unload() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(engine.wait_idle(), REPLACED_UNLOAD_WAIT_SECONDS)
            engine.unload_adapter(adapter)

        self._tasks.spawn(unload(), name=f"unload replaced adapter {adapter.name}")

    async def aclose(self) -> None:
        """Stop pending unloads of replaced adapters: their engines are closing.

        A supervisor shared with the registry is closed here too: this runs as the registry closes, and
        closing one twice is harmless."""
        await self._tasks.aclose()

