"""`nomoat pull`, `nomoat ls` and `nomoat rm`: through the running server when one answers (so a model lands in
the cache and state dir the service reads, as `ollama pull` does), else on this machine's own disk."""

from __future__ import annotations

import json
import sys
import urllib.parse
from pathlib import Path
from typing import IO, Any

from . import config
from .client import ServerClient, ServerRefused, error_message, sse_events
from .errors import ConfigError
from .models_toml import EMBEDDED, HF_PREFIX, ModelsFile
from .settings import Settings
from .store.available import AvailableModel, Source, discovered_models, with_projector
from .validation import format_validation_error

# A pull's stream is pinged every 15 s (http/pull.py): a read that waits this long has lost the server.
_STREAM_READ_SECONDS = 120.0
_KEY_HINT = " (pull, ls and rm through a server need its admin key: --admin-key or NOMOAT_ADMIN_KEY)"


def _refused(server: ServerClient, exc: ServerRefused) -> str:
    """What a refusal says: the server's own words, and which key it wants when it wants one."""
    if exc.status == 0:
        return f"the server at {server.url} stopped answering ({exc.message})"
    return f"the server at {server.url} answered {exc.status}: {exc.message}{_KEY_HINT if exc.status in (401, 403) else ''}"


def _reachable(settings: Settings, doing: str) -> ServerClient | None:
    """The server to ask, or None after saying in one line that the local disk is used instead."""
    server = ServerClient(settings)
    if server.answers():
        return server
    print(f"nomoat: no server at {server.url}: {doing}", file=sys.stderr)
    return None


def pull(cli: dict[str, Any], name: str) -> int:
    """Download OWNER/REPO[:QUANT] into the Hugging Face cache and list it as a pulled model: the server's, when
    one answers, else this user's."""
    from .store.hub import Hub
    from .store.pulling import pull as pull_locally

    try:
        settings, _, _ = config.load_settings(cli)
    except ConfigError as exc:
        print(f"nomoat: cannot pull {name}:\n{exc}", file=sys.stderr)
        return 1
    state_dir = settings.resolved_state_dir()
    hub = Hub(progress="bar", timeout=settings.pull_timeout_seconds)
    server = _reachable(settings, f"pulling into {hub.cache_dir} (listed in {state_dir}); a running service will "
                                  "not see it until it reads that cache and state dir and reloads (SIGHUP)")
    if server is not None:
        return _pull_through(server, name)
    try:
        print(f"pulling {name} from {hub.endpoint}", file=sys.stderr)
        pulled = pull_locally(hub, state_dir, name)
    except ConfigError as exc:
        print(f"nomoat: cannot pull {name}:\n{exc}", file=sys.stderr)
        return 1
    entry = pulled.entry
    print(f"pulled {entry.name} ({', '.join(entry.files)}, {_size(entry.size)}): serve it as model {entry.name!r}")
    return 0


def _pull_through(server: ServerClient, name: str) -> int:
    """POST /models/pull, its progress drawn as a bar on a terminal (plain lines otherwise), then the result."""
    bar = _ProgressBar(sys.stderr)
    try:
        print(f"pulling {name} through the server at {server.url}", file=sys.stderr)
        with server.open("POST", "/models/pull", {"model": name}, timeout=_STREAM_READ_SECONDS) as answer:
            for event in sse_events(answer):
                if "error" in event:
                    bar.end()
                    print(f"nomoat: cannot pull {name}: {error_message(json.dumps(event).encode())}",
                          file=sys.stderr)
                    return 1
                if event.get("object") == "model.pull.progress":
                    bar.show(str(event["file"]), int(event["completed"]), int(event["total"]))
                elif event.get("object") == "model.pull":
                    bar.end()
                    served = (f"it serves it as model {event['model']!r}" if event.get("served") else
                              "it does not serve it under that name: models.toml or the models dir holds it")
                    print(f"pulled {event['model']} ({', '.join(event['files'])}, {_size(int(event['size']))}) "
                          f"into the server at {server.url} ({event['path']}): {served}")
                    return 0
    except ServerRefused as exc:
        bar.end()
        print(f"nomoat: cannot pull {name}: {_refused(server, exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        bar.end()
        print(f"nomoat: cannot pull {name}: the server at {server.url} stopped answering ({exc})", file=sys.stderr)
        return 1
    bar.end()
    print(f"nomoat: cannot pull {name}: the server at {server.url} ended the stream without a result",
          file=sys.stderr)
    return 1


class _ProgressBar:
    """Each file's progress: one redrawn line on a terminal, a line per tenth otherwise (a log, a pipe)."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._tty = out.isatty()
        self._shown: tuple[str, int] | None = None
        self._open = False

    def show(self, file: str, done: int, total: int) -> None:
        fraction = done / total if total else 1.0
        if self._tty:
            filled = int(fraction * 30)
            self._out.write(f"\r{file}  [{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%}  "
                            f"{_size(done)} / {_size(total)}\x1b[K")
            self._out.flush()
            self._open = True
            return
        step = (file, int(fraction * 10))
        if step != self._shown:
            self._shown = step
            print(f"{file}: {fraction:.0%} of {_size(total)}", file=self._out)

    def end(self) -> None:
        if self._open:
            self._out.write("\n")
            self._open = False


def rm(cli: dict[str, Any], name: str) -> int:
    """Forget a pulled model and delete its files from the cache (those no other pulled model uses): the
    server's, when one answers (it stops serving the model first), else this user's."""
    from .store.hub import Hub
    from .store.pulling import forget

    try:
        settings, _, _ = config.load_settings(cli)
    except ConfigError as exc:
        print(f"nomoat: configuration error:\n{exc}", file=sys.stderr)
        return 2
    state_dir = settings.resolved_state_dir()
    server = _reachable(settings, f"removing {name} from {state_dir} and this user's Hugging Face cache")
    try:
        if server is not None:
            with server.open("DELETE", "/v1/models/" + urllib.parse.quote(name, safe="/:")) as answer:
                freed = int(json.load(answer)["freed_bytes"])
        else:
            entry, files = forget(state_dir, name)
            freed = Hub().remove(entry.repo, entry.commit, files)
    except ConfigError as exc:
        print(f"nomoat: {exc}", file=sys.stderr)
        return 1
    except ServerRefused as exc:
        print(f"nomoat: {_refused(server, exc) if server is not None else exc}", file=sys.stderr)
        return 1
    print(f"removed {name} ({_size(freed)} freed)")
    return 0


def ls(cli: dict[str, Any]) -> int:
    """Every model the running server serves (else a server started with these settings would): name, source,
    size on disk, path."""
    try:
        settings, config_path, data = config.load_settings(cli)
    except ConfigError as exc:
        print(f"nomoat: configuration error:\n{exc}", file=sys.stderr)
        return 2
    server = _reachable(settings, "listing what a server started here would serve")
    if server is not None:
        try:
            with server.open("GET", "/admin/store") as answer:
                listed = json.load(answer)["data"]
        except ServerRefused as exc:
            print(f"nomoat: {_refused(server, exc)}", file=sys.stderr)
            return 1
        _print_table([(r["name"], r["source"], _size(r["size"]), r["path"]) for r in listed])
        return 0
    try:
        rows = _configured(settings, config_path, data) + discovered_models(settings)
    except ConfigError as exc:
        print(f"nomoat: configuration error:\n{exc}", file=sys.stderr)
        return 2
    taken: set[str] = set()
    table: list[tuple[str, str, str, str]] = []
    for row in rows:
        if isinstance(row, AvailableModel):
            if row.name in taken:
                continue  # the server skips it too: models.toml (or the models dir) holds the name
            table.append((row.name, row.source, _size(row.size), str(row.path)))
        else:
            table.append(row)
        taken.add(table[-1][0])
    _print_table(table)
    return 0


def _print_table(rows: list[tuple[str, str, str, str]]) -> None:
    table = [("NAME", "SOURCE", "SIZE", "PATH"), *rows]
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])


def _configured(settings: Settings, config_path: Path | None, data: dict[str, Any]
                ) -> list[AvailableModel | tuple[str, str, str, str]]:
    """models.toml's models (or --model's), located without downloading anything."""
    from pydantic import ValidationError

    if config_path is None:  # no models.toml: the built-in model, or --model's file
        given = str(settings.model) if settings.model is not None else EMBEDDED
        name = settings.model_name or (config.EMBEDDED_NAME if settings.model is None else config.single_model_name(given))
        return [_locate(name, given, Path.cwd(), "built-in" if settings.model is None else "--model")]
    else:
        try:
            models = ModelsFile.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, str(config_path))) from None
    return [_locate(m.name, m.path, config_path.parent) for m in models.models]


def _locate(name: str, path: str, base: Path, source: Source = "models.toml") -> AvailableModel | tuple[str, str, str, str]:
    if path.startswith(HF_PREFIX):
        from .store.hub import Hub, HubError, parse_ref

        try:
            cached = Hub().cached(parse_ref(path))
        except HubError:
            cached = None
        if cached is None:
            return (name, source, "-", f"{path} (not downloaded yet)")
        return with_projector(name, source, cached.paths)
    try:
        return AvailableModel(name, source, (config.resolve_model_path(path, base, name),))
    except ConfigError:
        return (name, source, "-", f"{path} (missing)")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
