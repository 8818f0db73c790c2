"""Models available beyond models.toml: the models directory's files and pulled models, each with its source."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..settings import Settings
from .models_dir import files_size, is_projector, scan_models_dir, scan_projectors
from .pulled import PulledManifest

log = logging.getLogger(__name__)

# models.toml's; "built-in" and "--model" where no models.toml was read; the models dir's; pulled ones.
Source = Literal["models.toml", "built-in", "--model", "models-dir", "pulled"]


@dataclass(frozen=True)
class AvailableModel:
    """A model id, where it comes from, and the files it loads from (the first is what llama.cpp opens)."""

    name: str
    source: Source
    files: tuple[Path, ...]
    mmproj: Path | None = None  # its vision projector, when one was found with it (docs/images.md)

    @property
    def path(self) -> Path:
        return self.files[0]

    @property
    def size(self) -> int:
        return files_size(self.files)


def discovered_models(settings: Settings) -> list[AvailableModel]:
    """The models directory's models (by name), then pulled ones (in pull order) whose files are still cached."""
    found: list[AvailableModel] = []
    if settings.models_dir is not None:
        models = scan_models_dir(settings.models_dir)
        projectors = scan_projectors(settings.models_dir, list(models))
        found += [AvailableModel(name, "models-dir", files, projectors.get(name)) for name, files in models.items()]
    found += pulled_models(settings)
    return found


def pulled_models(settings: Settings) -> list[AvailableModel]:
    entries = PulledManifest(settings.resolved_state_dir()).entries()
    if not entries:
        return []
    from .hub import Hub  # huggingface_hub takes most of a second to import: only when something was pulled

    hub = Hub()
    found = []
    for entry in entries:
        paths = hub.files_at(entry.repo, entry.commit, entry.files)
        if paths is None:
            log.warning("pulled model %s: its files are gone from the Hugging Face cache (%s); pull it again",
                        entry.name, hub.cache_dir)
            continue
        found.append(with_projector(entry.name, "pulled", paths))
    return found


def with_projector(name: str, source: Source, paths: tuple[Path, ...]) -> AvailableModel:
    """A pulled model from its files in the Hub cache: the model's parts, and its vision projector if one came."""
    projectors = [p for p in paths if is_projector(p.name)]
    return AvailableModel(name, source, tuple(p for p in paths if not is_projector(p.name)),
                          projectors[0] if projectors else None)
