"""One available model's state (Resident, its Status and transitions), and what a loaded one holds open
(ServedModel)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol

from ..child import ChildModel
from ..engine.embedder import Embedder
from ..engine.engine import Engine
from ..errors import ServiceUnavailableError
from ..models_toml import ModelConfig
from .footprint import Footprint

log = logging.getLogger(__name__)


class Status(StrEnum):
    """Where a model stands (llama.cpp's server has its `slot_state`); only Residency moves a model between them.
    The values are what GET /models shows."""

    UNLOADED = "unloaded"
    LOADING = "loading"  # a load is under way: waiting for room, or opening (`Resident.reserved`)
    LOADED = "loaded"
    FAILED = "failed"  # its last load failed; tried again once its file or configuration changes


@dataclass(eq=False)
class ServedModel:
    """A loaded model: its engine, and its embedder once an embeddings request asked for one; or, for a model
    with `rpc`, the child process that serves it (requests are forwarded there: server/http/forward.py)."""

    config: ModelConfig
    engine: Engine | None  # None: `child` serves it
    embedder: Embedder | None = None
    child: ChildModel | None = None

    @classmethod
    def of(cls, config: ModelConfig, opened: Engine | ChildModel) -> ServedModel:
        return cls(config, None, child=opened) if isinstance(opened, ChildModel) else cls(config, opened)

    def local_engine(self) -> Engine:
        if self.engine is None:  # the forwarder sends every request that names such a model to its process
            raise ServiceUnavailableError(f"model {self.config.name!r} runs in a process of its own (rpc), which "
                                          "this endpoint does not reach", code="model_not_supported")
        return self.engine

    @property
    def outstanding(self) -> int:
        return sum(part.outstanding for part in (self.engine, self.embedder, self.child) if part is not None)

    async def wait_idle(self) -> None:
        """Return once none of its parts has a request outstanding (an embedder may be added meanwhile)."""
        while self.outstanding:
            for part in (self.engine, self.embedder, self.child):
                if part is not None:
                    await part.wait_idle()

    def abort(self, reason: str) -> None:
        """End every generation and embeddings request still running, each with ShuttingDown(reason)."""
        for part in (self.engine, self.embedder, self.child):
            if part is not None:
                part.abort(reason)

    def close(self) -> None:
        """Close the embedder, then the engine, which frees the model the embedder's context points into."""
        if self.embedder is not None and not self.embedder.close():
            log.error("model %s left allocated: its embeddings worker is still running", self.config.name)
            return
        for part in (self.engine, self.child):
            if part is not None:
                part.close()


class Hooks(Protocol):
    """What happens around a model's load and unload besides the engine (its adapters)."""

    async def attach(self, base: str, engine: Engine) -> None:
        """Open what the model needs on its new engine, before any request sees it."""
        ...

    def detach(self, base: str) -> None:
        """On the loop, once the model is unloaded."""
        ...


@dataclass(frozen=True)
class ModelState:
    """Where one model stands, as GET /models and /v1/models show it."""

    status: Status
    pinned: bool
    memory: int | None  # estimated bytes (as loaded now, or as it would load); None when its file is unreadable
    loaded_at: float | None
    expires_at: float | None  # when it unloads if it stays idle; None while busy, unloaded, or never
    busy: bool = False  # a request runs on it or waits for it
    error: str | None = None
    prompt_cache_bytes: int = 0  # KV states its prompt cache holds in RAM now (engine/prompt_cache.py)


@dataclass(eq=False)
class Resident:
    """One available model and where it stands. Residency alone calls the methods that change its status."""

    config: ModelConfig
    created: int
    status: Status = Status.UNLOADED
    served: ServedModel | None = None
    error: str | None = None
    failed_key: tuple[Any, ...] | None = None
    footprint: Footprint | None = None
    reserved: bool = False  # loading, with its footprint counted against the budget while it opens
    keep_alive: float | None = None  # the last request's, else models.toml's, else the server's
    leases: int = 0
    waiting: int = 0
    last_used: float = 0.0  # monotonic, for least-recently-used eviction
    idle_since: float | None = None  # wall clock, while loaded and idle
    loaded_at: float | None = None
    loading: asyncio.Future[None] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def busy(self) -> bool:
        return bool(self.leases or self.waiting or (self.served is not None and self.served.outstanding))

    @property
    def holds_memory(self) -> bool:
        """Loaded, or opening with its footprint reserved."""
        return self.status is Status.LOADED or (self.status is Status.LOADING and self.reserved)

    def memory(self, part: Literal["total", "cpu", "gpu"] = "total") -> int:
        """The estimate for what is open now (one context per running adapter set, one for embeddings):
        all of it, or the part in RAM or on the GPU."""
        if self.footprint is None:
            return 0
        contexts = 1
        if self.served is not None and self.served.engine is not None:
            contexts = max(1, self.served.engine.stats.contexts)
            contexts += self.served.embedder is not None
        return int(getattr(self.footprint, part)(contexts))

    # --- transitions (Residency's) ------------------------------------------------------

    def start_loading(self) -> Status:
        """Loading begins (waiting for room first); returns the status to go back to if it ends unloaded."""
        previous, self.status = self.status, Status.LOADING
        return previous

    def reserve(self, footprint: Footprint) -> None:
        """Room is made: its footprint counts against the budget while it opens."""
        self.footprint, self.reserved = footprint, True

    def load_ended(self, previous: Status) -> None:
        """A load ended without a model (failed or cancelled): back where it stood, or failed."""
        self.reserved = False
        if self.status is Status.LOADING:
            self.status = Status.FAILED if previous is Status.FAILED and self.error else Status.UNLOADED

    def mark_loaded(self, served: ServedModel, footprint: Footprint, now: float, monotonic: float) -> None:
        self.served, self.footprint, self.status, self.reserved = served, footprint, Status.LOADED, False
        self.error = self.failed_key = None
        self.loaded_at, self.last_used = now, monotonic

    def mark_failed(self, reason: str, key: tuple[Any, ...] | None) -> None:
        """Failed with `reason`; `key` (file_key) is what must change before a load is tried again (None: any)."""
        self.status, self.error, self.failed_key, self.reserved = Status.FAILED, reason, key, False

    def mark_unloaded(self) -> ServedModel | None:
        """Unloaded (asked to, idle past keep_alive, evicted, or at shutdown): returns what is left to close."""
        served = self.served
        self.status, self.served, self.loaded_at, self.idle_since, self.keep_alive = (Status.UNLOADED, None, None,
                                                                                      None, None)
        return served

    def mark_lost(self, reason: str) -> None:
        """Its child process ended unasked: failed with the reason, retried on the next request."""
        self.served, self.loaded_at, self.idle_since, self.keep_alive = None, None, None, None
        self.mark_failed(reason, None)


def file_key(config: ModelConfig) -> tuple[Any, ...]:
    """What must change for a failed model to be tried again: its configuration or its file."""
    try:
        st = Path(config.path).stat()
        stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = None
    return (repr(config.model_dump()), stamp)
