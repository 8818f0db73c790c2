"""The model store over HTTP, so that `nomoat pull/ls/rm` reach a running server's own cache and state dir (as
`ollama pull` does): POST /models/pull streams the download's progress as SSE, GET /admin/store lists what the
server serves from where, DELETE /v1/models/{id} removes a pulled model. Admin only (the route table).

huggingface_hub is imported inside the handlers: it reads its environment at import, and the test fork server
must not have imported it (docs/architecture.md, Tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field
from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..config import find_config_file
from ..core.fields import parse
from ..errors import (
    ConfigError,
    InvalidConfigError,
    InvalidRequestError,
    NomoatError,
    NotFoundError,
    ServiceUnavailableError,
)
from ..registry import ModelRegistry, ReloadResult
from ..settings import Settings
from ..store.available import discovered_models
from ..store.models_dir import files_size
from ..wire.body import read_json
from ..wire.errors import answer_for
from ..wire.routes import Handler

if TYPE_CHECKING:
    from ..store.pulling import Pulled

log = logging.getLogger(__name__)

Reloader = Callable[[], Awaitable[ReloadResult]]
# Progress events waiting for a slow client: past this many the newest are dropped (the next one supersedes them).
_QUEUED_EVENTS = 64


class PullBody(BaseModel):
    """POST /models/pull: the model to pull, as `nomoat pull` names it (OWNER/REPO[:QUANT])."""

    model: str = Field(min_length=1, max_length=200)


def store_handlers(registry: ModelRegistry, settings: Settings, reload: Reloader) -> dict[str, Handler]:
    """pull_model, list_store and remove_model, by route-table name. A pull or removal ends with `reload`
    (what SIGHUP does), so the model is served, or gone, without a restart."""
    state_dir = settings.resolved_state_dir()
    busy = asyncio.Lock()  # one pull or removal at a time: each rewrites the manifest and reloads

    async def pull(request: Request) -> Response:
        from ..store.hub import HubError, parse_ref

        body: PullBody = parse(PullBody, await read_json(request, settings.max_body_bytes,
                                                        settings.body_timeout_seconds))
        try:
            name = parse_ref(body.model).name
        except HubError as exc:
            raise InvalidRequestError(str(exc), param="model", code="invalid_model_name") from None
        await busy.acquire()
        run = _PullRun(settings, name, busy)
        try:
            first = await run.next_event()
        except BaseException:
            run.cancel()  # the client went away before the first event
            raise
        if first is None and isinstance(run.failure, NotFoundError):
            raise run.failure  # the Hub has no such model: nothing was downloaded, a plain 404
        return EventSourceResponse(run.events(first, reload, registry), sep="\n", ping=15)

    async def list_store(request: Request) -> Response:
        return JSONResponse({"object": "list", "state_dir": str(state_dir),
                             "data": await asyncio.to_thread(_store_rows, registry, settings)})

    async def remove_model(request: Request) -> Response:
        from ..store.hub import Hub
        from ..store.pulling import NotPulledError, forget

        name = request.path_params["model_id"]
        async with busy:
            try:
                entry, files = await asyncio.to_thread(forget, state_dir, name)
            except NotPulledError as exc:
                raise NotFoundError(str(exc), param="model", code="model_not_found") from None
            # The reload retires the model (closed once its requests end) before its files go.
            await _reload(reload, f"{name} was forgotten")
            freed = await asyncio.to_thread(Hub().remove, entry.repo, entry.commit, files)
        log.info("removed pulled model %s (%d bytes freed)", name, freed)
        return JSONResponse({"id": name, "object": "model", "deleted": True, "freed_bytes": freed})

    return {"pull_model": pull, "list_store": list_store, "remove_model": remove_model}


class _PullRun:
    """One pull: the download on a thread, its progress handed to the loop through a bounded queue.

    The client going away cancels it: the next progress report raises on the download's thread. The lock
    taken for it is released when the download ends, not when the response does.
    """

    def __init__(self, settings: Settings, name: str, lock: asyncio.Lock) -> None:
        self.name = name
        self.failure: NomoatError | None = None
        self._settings = settings
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(_QUEUED_EVENTS)
        self._cancelled = threading.Event()
        self._shown: tuple[str, int] | None = None
        self._task = asyncio.ensure_future(asyncio.to_thread(self._download))
        self._task.add_done_callback(lambda _: lock.release())

    def _download(self) -> Pulled:
        from ..store.hub import Hub
        from ..store.pulling import pull

        hub = Hub(progress="log", timeout=self._settings.pull_timeout_seconds, report=self._report)
        log.info("pulling %s from %s, asked by a client", self.name, hub.endpoint)
        return pull(hub, self._settings.resolved_state_dir(), self.name, keep_partial=False)

    def _report(self, file: str, done: int, total: int) -> None:
        from ..store.hub import PullCancelled

        if self._cancelled.is_set():
            raise PullCancelled(f"{self.name}: the client went away; the download was stopped")
        percent = done * 100 // total if total else 100
        if self._shown == (file, percent):
            return  # a percent at most: a 10 GB file would otherwise send a line per network read
        self._shown = (file, percent)
        event = {"object": "model.pull.progress", "model": self.name, "file": file, "completed": done, "total": total}
        self._loop.call_soon_threadsafe(self._offer, event)

    def _offer(self, event: dict[str, Any]) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(event)

    def cancel(self) -> None:
        if not self._task.done():
            self._cancelled.set()
            log.info("%s: the client went away; stopping its download", self.name)

    async def next_event(self) -> dict[str, Any] | None:
        """The next progress event; None once the download has ended (then `failure` says how) and all are read."""
        while self._queue.empty() and not self._task.done():
            getter = asyncio.ensure_future(self._queue.get())
            try:
                await asyncio.wait({getter, self._task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                return getter.result()
        if not self._queue.empty():
            return self._queue.get_nowait()
        exc = self._task.exception()
        if exc is not None:
            self.failure = _as_error(exc)
        return None

    async def events(self, first: dict[str, Any] | None, reload: Reloader,
                     registry: ModelRegistry) -> AsyncIterator[dict[str, str]]:
        try:
            event = first
            while event is not None:
                yield _data(event)
                event = await self.next_event()
            if self.failure is not None:
                yield _data(answer_for(self.failure).body)
                return
            pulled = self._task.result()
            try:
                await _reload(reload, f"{self.name} was pulled into {pulled.paths[0]}")
            except NomoatError as exc:
                yield _data(answer_for(exc).body)
                return
            entry = pulled.entry
            yield _data({"object": "model.pull", "status": "success", "model": entry.name, "files": entry.files,
                         "path": str(pulled.paths[0]), "size": entry.size,
                         "state_dir": str(self._settings.resolved_state_dir()),
                         "served": registry.is_model_id(entry.name)})
        finally:
            self.cancel()


async def _reload(reload: Reloader, done: str) -> None:
    """Apply the manifest the way SIGHUP does; a configuration that no longer loads is a 422, as /admin/reload's."""
    try:
        await reload()
    except ConfigError as exc:
        raise InvalidConfigError(f"{done}, but the configuration was not applied (the previous one still "
                                 f"serves): {exc}") from None


def _as_error(exc: BaseException) -> NomoatError:
    from ..store.hub import HubError, HubNotFoundError

    if isinstance(exc, HubNotFoundError):
        return NotFoundError(str(exc), param="model", code="model_not_found")
    if isinstance(exc, HubError):
        return ServiceUnavailableError(str(exc), code="pull_failed")
    if isinstance(exc, NomoatError):
        return exc
    log.error("pull failed unexpectedly", exc_info=exc)
    return ServiceUnavailableError(f"the pull failed: {type(exc).__name__}: {exc}", code="pull_failed")


def _data(payload: dict[str, Any]) -> dict[str, str]:
    return {"data": json.dumps(payload, ensure_ascii=False, separators=(",", ":"))}


def _store_rows(registry: ModelRegistry, settings: Settings) -> list[dict[str, Any]]:
    """What `nomoat ls` prints, as this server sees it: each base model's source, size on disk and path."""
    found = {m.name: m for m in discovered_models(settings)}
    # As config.load reads them: --model's file, else models.toml's models, else the built-in model.
    configured = "--model" if settings.model is not None else \
        "models.toml" if find_config_file(settings.config) is not None else "built-in"
    rows = []
    for name, resident in registry.residency.residents.items():
        path = resident.config.path
        available = found.get(name)
        if available is not None and str(available.path) == path:
            rows.append({"name": name, "source": available.source, "size": available.size, "path": path})
        else:  # models.toml's own (or --model's): a name it holds is never taken by a discovered model
            rows.append({"name": name, "source": configured, "size": files_size((Path(path),)), "path": path})
    return rows
