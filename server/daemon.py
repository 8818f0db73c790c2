"""The process lifecycle, owned here alone: load, serve, SIGTERM drain, SIGHUP reload, close; sd_notify and
its watchdog; the adapter-directory watcher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator

import uvicorn

from . import config
from .adapters.watch import AdapterWatcher
from .engine.errors import EngineError
from .errors import ConfigError, NomoatError
from .files.store import FileStore
from .http.app import build_app
from .http.connections import AcceptFailureHandler, ConnectionLimits, guarded_protocol
from .http.listen import CannotListen, close_all, listening_sockets
from .metrics import EventLoopMonitor, Metrics
from .models_toml import ModelsFile
from .openai.fine_tuning import tuner_for
from .registry import ModelRegistry, ReloadResult
from .sdnotify import Notifier, watchdog_interval
from .settings import Settings
from .tasks import Supervisor
from .wire.auth import Authenticator, KeyRing, exposure_warning

log = logging.getLogger(__name__)

ConfigLoader = Callable[[], tuple[Settings, ModelsFile]]

# Seconds uvicorn waits past the grace period before it cancels requests, so the engines' own
# shutdown errors reach every client first.
_CANCEL_MARGIN_SECONDS = 3.0
# How long the process may take to exit once its models are closed. Python waits at exit for every
# thread of every thread pool (concurrent.futures joins them), so one stuck in a call that does not
# return (llama.cpp parsing a grammar, a chat template rendering) would keep a stopped server alive
# until SIGKILL; past this it exits without them. Engines' own threads are not waited for
# (Engine.close gives up on one after its timeout and says so).
_EXIT_SECONDS = 5.0
# What a reload applies besides the models; every other setting is fixed for the process's life.
_RELOADABLE = {"api_key", "api_key_file", "admin_key", "config", "notify_socket", "watchdog_usec", "watchdog_pid"}


def _exit_unless_done_within(seconds: float) -> None:
    """Exit the process in `seconds` if it has not exited by then, naming the threads that held it."""

    def force() -> None:
        held = [t.name for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon
                and t is not threading.main_thread()]
        log.error("still running %gs after the models were closed, held by %s (a call that does not return); "
                  "exiting without waiting for it", seconds, ", ".join(held) or "Python's exit")
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(seconds, force)
    timer.daemon = True  # a process that exits on its own is not kept for it
    timer.start()


def _unwritable_state_dir(settings: Settings) -> str | None:
    """Why the state dir (pulled models, converted adapters, stored responses) cannot be written, or None.

    Found before anything loads, with the setting to change, instead of as a 500 on the first stored response.
    """
    try:
        state_dir = settings.resolved_state_dir()
        state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=state_dir, prefix=".nomoat-write-check-"):
            pass
    except ConfigError as exc:
        return str(exc)
    except OSError as exc:
        return (f"the state dir {settings.state_dir or state_dir} is not writable ({exc.strerror or exc}): set "
                "state_dir (--state-dir, NOMOAT_STATE_DIR) to a folder this user may write")
    return None


class _Server(uvicorn.Server):
    """uvicorn's server, minus its signal handlers: the Daemon owns the signals and sets the flags."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Daemon:
    """Owns one server process from model load to exit.

    Signals only set flags or start tasks on the event loop (as uvicorn does): SIGTERM and
    SIGINT stop accepting and drain in-flight requests for `shutdown_grace_seconds`; a second
    SIGINT stops waiting. SIGHUP (and POST /admin/reload) re-reads models.toml and applies
    the difference; an invalid file is logged and the old configuration keeps serving.
    """

    def __init__(self, settings: Settings, models: ModelsFile, load_config: ConfigLoader) -> None:
        """Raises ConfigError for settings that cannot work (an unreadable key file, a required key missing)."""
        self.settings = settings
        self.metrics = Metrics()
        self.tasks = Supervisor()  # the watchdog, the loop monitor, readiness, grace and SIGHUP reloads
        self.registry = ModelRegistry(models, settings, self.metrics)
        self.notifier = Notifier(settings.notify_socket)
        self.auth = Authenticator(KeyRing.from_settings(settings), metrics_require_key=settings.metrics_require_key)
        self.files = FileStore.from_settings(settings)
        self.tuner = tuner_for(settings, self.registry, self.files)  # started once the models load, closed before them
        self.app = build_app(settings, self.registry, self.metrics, auth=self.auth, reload=self.reload,
                             files=self.files, tuner=self.tuner)
        self.registry.residency.on_change = self._residency_changed
        self._load_config = load_config
        self._server: _Server | None = None
        self._listeners: list[socket.socket] = []
        self._stopping = False
        self._reload_lock = asyncio.Lock()

    def run(self) -> int:
        """Serve until stopped; the process exit code (0 after a clean drain). Once the models are closed
        the process has _EXIT_SECONDS to exit before it is ended (exit code 1): a stopped server never lingers.
        The port is taken before anything loads: one in use is exit code 2 at once, not after the models load."""
        problem = _unwritable_state_dir(self.settings)
        if problem is not None:
            log.error("cannot start: %s", problem)
            return 2
        try:
            self._listeners = listening_sockets(self.settings.host, self.settings.port)
        except CannotListen as exc:
            log.error("%s", exc)
            return 2
        return asyncio.run(self._main())

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        self._install_signal_handlers(loop)
        interval = watchdog_interval(self.settings.watchdog_usec, self.settings.watchdog_pid)
        if interval is not None:
            self.tasks.spawn(self._watchdog(interval), name="watchdog")
        try:
            self._log_locations()
            self.notifier.status("loading models")
            try:
                await asyncio.to_thread(self.registry.load)
            except (ConfigError, NomoatError, EngineError) as exc:  # a model or adapter that cannot be served
                log.error("cannot start:\n%s", exc)
                return 2
            if self._stopping:
                return 0
            self.tasks.spawn(EventLoopMonitor(self.metrics).run(), name="event loop monitor")
            await self.tuner.start()  # its jobs' adapters on their bases; jobs cut by the last shutdown queued again
            watcher = (AdapterWatcher(self.registry.catalogue, self.settings.adapter_dirs)
                       if self.settings.watch_adapters else None)
            if watcher is not None:
                await watcher.start()
            try:
                return await self._serve()
            finally:
                if watcher is not None:
                    await watcher.stop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.tasks.aclose()
            await self.tuner.aclose()  # a running trainer checkpoints and exits: the next start resumes it
            if self.registry.ready:
                await self.registry.aclose()
            close_all(self._listeners)  # uvicorn closed them if it served; not if the load failed
            self.notifier.close()
            _exit_unless_done_within(_EXIT_SECONDS)

    async def _serve(self) -> int:
        warning = exposure_warning(self.settings, self.auth.keys)
        if warning:
            log.warning("%s", warning)
        limits = ConnectionLimits.from_settings(self.settings)
        log.info("connections: at most %d open at once (max_connections), each request head within %gs "
                 "(header_timeout_seconds)", limits.max_connections, limits.header_timeout)
        config = uvicorn.Config(
            self.app,
            host=self.settings.host,
            port=self.settings.port,
            log_level=self.settings.log_level,
            log_config=None,  # keep the process's logging (text or JSON) for uvicorn's loggers too
            access_log=False,  # one line per request comes from the app, with model and tokens
            lifespan="off",  # the app owns no lifecycle: this Daemon loads and closes everything
            # h11 with a deadline for each request head and a cap on open connections (http/connections.py).
            http=guarded_protocol(limits),
            timeout_keep_alive=self.settings.idle_connection_timeout_seconds,
            # Past the grace period the engines end every generation with an error (_abort_after_grace);
            # uvicorn cancels what is left only after that, so each client is told why it ended.
            timeout_graceful_shutdown=math.ceil(self.settings.shutdown_grace_seconds + _CANCEL_MARGIN_SECONDS),
        )
        server = self._server = _Server(config)
        self.tasks.spawn(self._announce_ready(server), name="announce ready")
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(AcceptFailureHandler())  # out of descriptors: one line per interval
        try:
            await server.serve(sockets=self._listeners)
        except SystemExit as exc:  # uvicorn's way out when it cannot start, logged by it
            return exc.code if isinstance(exc.code, int) else 1
        finally:
            loop.set_exception_handler(None)
        log.info("stopped")
        return 0

    async def _announce_ready(self, server: uvicorn.Server) -> None:
        while not server.started:  # noqa: ASYNC110  (uvicorn.Server sets a flag when it starts, and has no event to wait on)
            await asyncio.sleep(0.05)
        base = self._base_url()
        page = f"; the page: {base}/" if self.settings.ui else ""
        log.info("serving %s on %s/v1 (loaded: %s)%s", ", ".join(self.registry.residency.residents), base,
                 ", ".join(self.registry.engines()) or "none", page)
        self.notifier.ready(self._status_line())

    def _base_url(self) -> str:
        """http://HOST:PORT as listened on: the port the socket holds (--port 0 picks one), IPv6 in brackets."""
        host = self.settings.host
        port = self._listeners[0].getsockname()[1] if self._listeners else self.settings.port
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def _log_locations(self) -> None:
        """Where this server's configuration, state and model files are, before the models load."""
        log.info("%s", config.config_source(self.settings))
        try:
            state = str(self.settings.resolved_state_dir())
        except ConfigError as exc:
            state = f"none ({exc})"
        log.info("state: %s; model cache (Hugging Face): %s", state, config.model_cache_dir())

    # --- signals ---------------------------------------------------------------------

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self.stop, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, self.stop, signal.SIGINT)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop accepting connections and let in-flight requests finish within the grace period."""
        if self._stopping:
            if sig == signal.SIGINT and self._server is not None:
                log.warning("second interrupt: not waiting for in-flight requests")
                self._server.force_exit = True
            return
        self._stopping = True
        log.info("%s: no new connections; draining in-flight requests for up to %gs",
                 signal.Signals(sig).name, self.settings.shutdown_grace_seconds)
        self.notifier.stopping()
        if self._server is not None:
            self._server.should_exit = True
            self.tasks.spawn(self._abort_after_grace(), name="abort after grace")

    async def _abort_after_grace(self) -> None:
        """End the generations still running when the grace period is over, each with an error its
        client sees (an error event in a stream, a 503 otherwise), before uvicorn cuts connections."""
        await asyncio.sleep(self.settings.shutdown_grace_seconds)
        running = self.registry.abort_all("the server is shutting down: the shutdown grace period is over")
        if running:
            log.warning("grace period over: %d requests still running were ended", running)

    def _on_sighup(self) -> None:
        if self._stopping:
            log.info("SIGHUP ignored: shutting down")
            return
        if self._server is None or not self._server.started:
            # Reloading now would report READY=1 before the first load has finished.
            log.warning("SIGHUP ignored: still starting; send it again once the server is ready")
            return
        self.tasks.spawn(self._reload_quietly(), name="reload on SIGHUP")

    async def _reload_quietly(self) -> None:
        with contextlib.suppress(Exception):  # reload() has logged it; the old config serves on
            await self.reload()

    # --- reload ----------------------------------------------------------------------

    async def reload(self) -> ReloadResult:
        """Re-read the configuration and apply its models; any failure leaves everything as it was.

        An invalid configuration raises ConfigError; anything else is a bug, logged with its
        traceback and raised as it is (a 500 to POST /admin/reload).
        """
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                settings, models = await asyncio.to_thread(self._load_config)
                keys = KeyRing.from_settings(settings)  # a rotated key file takes effect on reload
                result = await self.registry.apply(models, drain_timeout=self._drain_timeout())
            except Exception as exc:
                self.metrics.reloads.labels("error").inc()
                if not isinstance(exc, ConfigError):
                    log.exception("reload failed unexpectedly")
                log.error("reload failed; still serving the previous configuration:\n%s", exc)
                # systemd waits in "reloading" until READY=1, whatever happened.
                self.notifier.ready("reload failed; serving the previous configuration")
                raise
            self.auth.keys = keys
            self.metrics.reloads.labels("ok").inc()
            self._note_restart_only(settings)
            self.notifier.ready(self._status_line())
            return result

    def _drain_timeout(self) -> float:
        """How long a replaced model may keep serving its admitted requests."""
        # Every generation ends by request_timeout_seconds; without one, wait a generous ten minutes.
        return (self.settings.request_timeout_seconds or 600.0) + self.settings.shutdown_grace_seconds

    def _note_restart_only(self, new: Settings) -> None:
        changed = sorted(
            name for name in Settings.model_fields
            if name not in _RELOADABLE and getattr(new, name) != getattr(self.settings, name)
        )
        if changed:
            log.warning("reload does not apply %s; restart the server for that", ", ".join(changed))

    def _status_line(self) -> str:
        loaded = ", ".join(self.registry.engines()) or "none"
        available = ", ".join(self.registry.residency.residents)
        return f"serving {available} on {self.settings.host}:{self.settings.port}; loaded: {loaded}"

    def _residency_changed(self) -> None:
        if self._server is not None and self._server.started and not self._stopping:
            self.notifier.status(self._status_line())

    # --- background tasks ------------------------------------------------------------

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 from the event loop itself: a blocked loop stops the pings and systemd restarts us."""
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)
