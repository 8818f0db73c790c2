"""`nomoat pull`, `nomoat ls` and `nomoat rm`: through the running server when one answers (so a model lands in
the cache and state dir the service reads, as `ollama pull` does), else on this machine's own disk."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from . import config
from .errors import ConfigError
from .models_toml import EMBEDDED, HF_PREFIX, ModelsFile
from .settings import Settings, format_validation_error
from .store.available import AvailableModel, discovered_models

# How long `pull`, `ls` and `rm` wait for a server to answer GET /health before working on the local disk.
_PROBE_SECONDS = 3.0
# A pull's stream is pinged every 15 s (http/pull.py): a read that waits this long has lost the server.
_STREAM_READ_SECONDS = 120.0


class _Server:
    """The running server the settings point at (as `nomoat ps` finds it), asked with the admin key (else the
    first API key)."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.client_url()
        key = settings.admin_key or settings.api_key
        self._key = key.get_secret_value().split(",")[0].strip() if key is not None else None

    def answers(self) -> bool:
        """Whether anything answers HTTP there (a loading server's 503 too)."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=_PROBE_SECONDS):
                return True
        except urllib.error.HTTPError:
            return True
        except (urllib.error.URLError, OSError):
            return False

    def open(self, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float = 60.0) -> IO[bytes]:
        """The answer to METHOD PATH; a refusal raises _Refused with the server's own message."""
        request = urllib.request.Request(self.url + path, method=method,
                                         data=None if body is None else json.dumps(body).encode())
        request.add_header("Content-Type", "application/json")
        if self._key is not None:
            request.add_header("Authorization", "Bearer " + self._key)
        try:
            answer: IO[bytes] = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise _Refused(f"the server at {self.url} answered {exc.code}: {_error_message(exc.read())}"
                           f"{_KEY_HINT if exc.code in (401, 403) else ''}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise _Refused(f"the server at {self.url} stopped answering ({exc})") from None
        return answer


_KEY_HINT = " (pull, ls and rm through a server need its admin key: --admin-key or NOMOAT_ADMIN_KEY)"


class _Refused(Exception):
    """The server answered with an error, or went away mid-answer: the message says which, in its words."""


def _error_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:200]


def _reachable(settings: Settings, doing: str) -> _Server | None:
    """The server to ask, or None after saying in one line that the local disk is used instead."""
    server = _Server(settings)
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


def _pull_through(server: _Server, name: str) -> int:
    """POST /models/pull, its progress drawn as a bar on a terminal (plain lines otherwise), then the result."""
    bar = _ProgressBar(sys.stderr)
    try:
        print(f"pulling {name} through the server at {server.url}", file=sys.stderr)
        with server.open("POST", "/models/pull", {"model": name}, timeout=_STREAM_READ_SECONDS) as answer:
            for event in _sse_events(answer):
                if "error" in event:
                    bar.end()
                    print(f"nomoat: cannot pull {name}: {_error_message(json.dumps(event).encode())}",
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
    except (_Refused, OSError) as exc:
        bar.end()
        print(f"nomoat: cannot pull {name}: {exc}", file=sys.stderr)
        return 1
    bar.end()
    print(f"nomoat: cannot pull {name}: the server at {server.url} ended the stream without a result",
          file=sys.stderr)
    return 1


def _sse_events(stream: IO[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON payloads of a server-sent event stream's `data:` lines; pings (comments) are skipped."""
    for raw in stream:
        line = raw.decode(errors="replace").strip()
        if not line.startswith("data:"):
            continue
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


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
    except (ConfigError, _Refused) as exc:
        print(f"nomoat: {exc}", file=sys.stderr)
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
        except _Refused as exc:
            print(f"nomoat: {exc}", file=sys.stderr)
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

    if config_path is None:
        given = str(settings.model) if settings.model is not None else EMBEDDED
        name = settings.model_name or (config.EMBEDDED_NAME if settings.model is None else config.single_model_name(given))
        entries = [(name, given)]
        base = Path.cwd()
    else:
        try:
            models = ModelsFile.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, str(config_path))) from None
        entries = [(m.name, m.path) for m in models.models]
        base = config_path.parent
    return [_locate(name, path, base) for name, path in entries]


def _locate(name: str, path: str, base: Path) -> AvailableModel | tuple[str, str, str, str]:
    if path.startswith(HF_PREFIX):
        from .store.hub import Hub, HubError, parse_ref

        try:
            cached = Hub().cached(parse_ref(path))
        except HubError:
            cached = None
        if cached is None:
            return (name, "models.toml", "-", f"{path} (not downloaded yet)")
        return AvailableModel(name, "models.toml", cached.paths)
    try:
        return AvailableModel(name, "models.toml", (config.resolve_model_path(path, base, name),))
    except ConfigError:
        return (name, "models.toml", "-", f"{path} (missing)")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
