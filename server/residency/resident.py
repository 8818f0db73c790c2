"""One available model's state (Resident), what a loaded one holds (ServedModel), and the request scope that
keeps the models it resolved busy (lease_scope)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from ..child import ChildModel
from ..engine.embedder import Embedder
from ..engine.engine import Engine
from ..errors import ServiceUnavailableError
from ..models_toml import ModelConfig
from .footprint import Footprint

log = logging.getLogger(__name__)

Status = Literal["unloaded", "loading", "loaded", "failed"]

_held: contextvars.ContextVar[list[Callable[[], None]] | None] = contextvars.ContextVar("nomoat_leases", default=None)


@contextlib.contextmanager
def lease_scope() -> Iterator[None]:
    """Models resolved inside stay busy (never unloaded) until the scope ends: one HTTP request's life."""
    held: list[Callable[[], None]] = []
    token = _held.set(held)
    try:
        yield
    finally:
        _held.reset(token)
        for release in held:
            release()


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


@dataclass(eq=False)
class Resident:
    """One available model and where it stands."""

    config: ModelConfig
    created: int
    status: Status = "unloaded"
    served: ServedModel | None = None
    error: str | None = None
    failed_key: tuple[Any, ...] | None = None
    footprint: Footprint | None = None
    keep_alive: float | None = None  # the last request's, else models.toml's, else the server's
    leases: int = 0
    waiting: int = 0
    last_used: float = 0.0  # monotonic, for least-recently-used eviction
    idle_since: float | None = None  # wall clock, while loaded and idle
    loaded_at: float | None = None
    loading: asyncio.Future[None] | None = None
    timer: asyncio.TimerHandle | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def busy(self) -> bool:
        return bool(self.leases or self.waiting or (self.served is not None and self.served.outstanding))

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


def current_scope() -> list[Callable[[], None]] | None:
    """The releases of the request scope this code runs in, if any."""
    return _held.get()


def file_key(config: ModelConfig) -> tuple[Any, ...]:
    """What must change for a failed model to be tried again: its configuration or its file."""
    try:
        st = Path(config.path).stat()
        stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = None
    return (repr(config.model_dump()), stamp)
