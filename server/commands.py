"""`nomoat pull`, `nomoat ls` and `nomoat rm`: models on disk, managed without a running server."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from . import config
from .errors import ConfigError
from .models_toml import EMBEDDED, HF_PREFIX, ModelsFile
from .settings import Settings, format_validation_error
from .store.available import AvailableModel, discovered_models
from .store.models_dir import files_size
from .store.pulled import PulledManifest, PulledModel


def pull(cli: dict[str, Any], name: str) -> int:
    """Download OWNER/REPO[:QUANT] into the Hugging Face cache and list it as a pulled model."""
    from .store.hub import Hub, parse_ref

    try:
        settings, _, _ = config.load_settings(cli)
        ref = parse_ref(name)
        hub = Hub(progress="bar", timeout=settings.pull_timeout_seconds)
        print(f"pulling {ref.name} from {hub.endpoint}", file=sys.stderr)
        files = hub.fetch(ref)
    except ConfigError as exc:
        print(f"nomoat: cannot pull {name}:\n{exc}", file=sys.stderr)
        return 1
    size = files_size(files.paths)
    PulledManifest(settings.resolved_state_dir()).add(
        PulledModel(name=ref.name, repo=ref.repo, commit=files.commit, files=list(files.files), size=size))
    print(f"pulled {ref.name} ({', '.join(files.files)}, {_size(size)}): serve it as model {ref.name!r}")
    return 0


def rm(cli: dict[str, Any], name: str) -> int:
    """Forget a pulled model and delete its files from the cache (those no other pulled model uses)."""
    try:
        settings, _, _ = config.load_settings(cli)
    except ConfigError as exc:
        print(f"nomoat: configuration error:\n{exc}", file=sys.stderr)
        return 2
    manifest = PulledManifest(settings.resolved_state_dir())
    entries = manifest.entries()
    entry = next((m for m in entries if m.name == name), None)
    if entry is None:
        pulled = ", ".join(m.name for m in entries) or "none"
        print(f"nomoat: {name!r} is not a pulled model (pulled models: {pulled}); "
              "models.toml and models-dir models are removed by editing those", file=sys.stderr)
        return 1
    from .store.hub import Hub

    shared = {f for m in entries if m is not entry and (m.repo, m.commit) == (entry.repo, entry.commit) for f in m.files}
    freed = Hub().remove(entry.repo, entry.commit, [f for f in entry.files if f not in shared])
    manifest.remove(name)
    print(f"removed {name} ({_size(freed)} freed)")
    return 0


def ls(cli: dict[str, Any]) -> int:
    """Every model a server started with these settings would serve: name, source, size on disk, path."""
    try:
        settings, config_path, data = config.load_settings(cli)
        rows = _configured(settings, config_path, data) + discovered_models(settings)
    except ConfigError as exc:
        print(f"nomoat: configuration error:\n{exc}", file=sys.stderr)
        return 2
    taken: set[str] = set()
    table = [("NAME", "SOURCE", "SIZE", "PATH")]
    for row in rows:
        if isinstance(row, AvailableModel):
            if row.name in taken:
                continue  # the server skips it too: models.toml (or the models dir) holds the name
            table.append((row.name, row.source, _size(row.size), str(row.path)))
        else:
            table.append(row)
        taken.add(table[-1][0])
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
    return 0


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
