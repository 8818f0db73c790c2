"""What a reload does with the adapters: which entries stay as they are, and which load anew for the new model set."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..engine.adapters import LoraAdapter
from ..engine.engine import Engine
from ..models_toml import ModelsFile
from .entries import AdapterEntry, Origin


@dataclass(frozen=True)
class Load:
    """An adapter a reload loads before the swap, and the entry it becomes."""

    name: str
    base: str
    scale: float
    origin: Origin
    source: Path
    engine: Engine | None  # None: the base is not loaded, the adapter is checked and kept detached
    base_path: Path
    path: str | None = None

    def entry(self, adapter: LoraAdapter) -> AdapterEntry:
        return AdapterEntry(self.name, self.base, self.scale, adapter, self.origin, path=self.path)


def plan(entries: Mapping[str, AdapterEntry], models_file: ModelsFile, engines: Mapping[str, Engine | None],
         retired: set[str]) -> tuple[dict[str, AdapterEntry], list[Load]]:
    """The entries kept and the loads, for the new model set.

    `engines` is the new model set (None for a model not loaded), `retired` the models whose engine
    changes. models.toml's adapters load where new or changed; runtime adapters on a retired model load
    again from their files, keeping their names; those whose model is gone are left out.
    """
    wanted = {a.name: a for a in models_file.adapters}
    paths = {m.name: Path(m.path) for m in models_file.models}
    kept: dict[str, AdapterEntry] = {}
    loads: list[Load] = []
    for name, entry in entries.items():
        if name in wanted:
            continue  # models.toml decides below
        if entry.origin == "config" or entry.base not in engines:
            continue  # gone from models.toml, or its model is
        if entry.base in retired:
            loads.append(Load(name, entry.base, entry.scale, entry.origin, entry.adapter.source,
                              engines[entry.base], paths[entry.base]))
        else:
            kept[name] = entry
    for spec in models_file.adapters:
        base, existing = models_file.base_of(spec.base), entries.get(spec.name)
        same_file = (existing is not None and existing.origin == "config" and existing.path == spec.path
                     and existing.base == base and base not in retired)
        if same_file and existing is not None:
            kept[spec.name] = (dataclasses.replace(existing, scale=spec.scale) if existing.scale != spec.scale
                               else existing)
        else:
            loads.append(Load(spec.name, base, spec.scale, "config", Path(spec.path), engines[base], paths[base],
                              spec.path))
    return kept, loads
