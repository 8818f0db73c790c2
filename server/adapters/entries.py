"""What the adapter catalogue lists: adapters by name on a base, and named stacks of them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from ..engine.adapters import LoraAdapter
from ..models_toml import ModelsFile

Origin = Literal["config", "api", "watch", "tune"]


@dataclass
class AdapterEntry:
    """An adapter served by name: on which base, at which default scale, from where."""

    name: str
    base: str
    scale: float
    adapter: LoraAdapter
    # "config" (models.toml or --lora), "api" (POST /v1/adapters), "watch" (a watched directory) or "tune" (a
    # fine-tuning job's result: server/tuning/, removed with DELETE /v1/models/{id})
    origin: Origin
    created: int = field(default_factory=lambda: int(time.time()))
    path: str | None = None  # as models.toml gave it, to tell a changed entry on reload


@dataclass(frozen=True)
class StackEntry:
    """A named mix of adapters on one base, served as a model id."""

    name: str
    base: str
    adapters: tuple[tuple[str, float], ...]


def stacks_of(models_file: ModelsFile) -> dict[str, StackEntry]:
    return {s.name: StackEntry(s.name, models_file.base_of(s.base), tuple(s.adapters.items()))
            for s in models_file.stacks}
