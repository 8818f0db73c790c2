"""A pull and a removal of a pulled model, the same whether `nomoat pull/rm` runs them or a server does for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .hub import Hub, HubError, parse_ref
from .models_dir import files_size
from .pulled import PulledManifest, PulledModel


class NotPulledError(ConfigError):
    """A name `rm` was given that no pull recorded; the message lists the names there are."""


@dataclass(frozen=True)
class Pulled:
    """A model now in the cache and in the manifest: the entry recorded and its files on disk (the first loads)."""

    entry: PulledModel
    paths: tuple[Path, ...]


def pull(hub: Hub, state_dir: Path, name: str, *, keep_partial: bool = True) -> Pulled:
    """Download NAME (OWNER/REPO[:QUANT]) into `hub`'s cache and record it in `state_dir`'s manifest.

    `keep_partial`: leave an unfinished download for the next pull to resume (a user's own cache); else remove
    it (a server's, which the user pulling through it cannot clean up). Raises HubError.
    """
    ref = parse_ref(name)
    try:
        files = hub.fetch(ref)
    except HubError:
        if not keep_partial:
            hub.discard_partial(ref.repo)
        raise
    entry = PulledModel(name=ref.name, repo=ref.repo, commit=files.commit, files=list(files.files),
                        size=files_size(files.paths))
    PulledManifest(state_dir).add(entry)
    return Pulled(entry, files.paths)


def forget(state_dir: Path, name: str) -> tuple[PulledModel, list[str]]:
    """Remove NAME from the manifest: its entry, and those of its files no other pulled model uses (to delete
    with `Hub.remove` once nothing serves them). Raises NotPulledError."""
    manifest = PulledManifest(state_dir)
    entries = manifest.entries()
    entry = next((m for m in entries if m.name == name), None)
    if entry is None:
        pulled = ", ".join(m.name for m in entries) or "none"
        raise NotPulledError(f"{name!r} is not a pulled model (pulled models: {pulled}); "
                             "models.toml and models-dir models are removed by editing those")
    shared = {f for m in entries if m is not entry and (m.repo, m.commit) == (entry.repo, entry.commit) for f in m.files}
    manifest.remove(name)
    return entry, [f for f in entry.files if f not in shared]
