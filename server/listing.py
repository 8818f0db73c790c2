"""What the server answers to, as /v1/models lists it: each model under its name and aliases (loaded or not), each
adapter and stack, with what a client reads of them; a model not loaded shows what its file's header says."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .adapters.catalogue import AdapterCatalogue
from .engine.reranker import file_kind
from .engine.sampling_defaults import SamplingDefaults, read_gguf_sampling, resolve_defaults
from .residency.manager import Residency
from .residency.resident import ModelState


@dataclass(frozen=True)
class ServedId:
    """One id the server answers to, as /v1/models lists it: a model, an alias, an adapter or a stack."""

    id: str
    kind: Literal["model", "alias", "adapter", "stack"]
    created: int
    root: str  # the model the id runs on
    parent: str | None = None  # the base model of an adapter or stack
    max_model_len: int | None = None  # models and aliases: tokens per sequence
    state: ModelState | None = None  # models and aliases: loaded or not, memory, when it unloads
    model_adapters: tuple[str, ...] = ()  # models: the adapters registered on it
    adapters: tuple[tuple[str, float], ...] = ()  # stacks: adapter name and scale
    sampling: SamplingDefaults | None = None  # models and aliases
    chat_format: str | None = None  # models and aliases, once loaded: the family format its template marks
    vision: bool = False  # models and aliases: a vision projector (mmproj) is paired with it, so it takes images
    model_kind: str | None = None  # models and aliases: "chat", or "reranker" (rank pooling; /v1/rerank)


class Listing:
    """Every served id, read from the residency (models) and the catalogue (adapters, stacks) as they are now."""

    def __init__(self, residency: Residency, catalogue: AdapterCatalogue) -> None:
        self._residency, self._catalogue = residency, catalogue
        self._file_sampling: dict[str, dict[str, float | int]] = {}  # GGUF path → its sampling defaults
        self._file_kinds: dict[str, str | None] = {}  # GGUF path → "reranker" or "chat" from its header

    def served_ids(self) -> list[ServedId]:
        """Each model's ids (name, then aliases), adapters, stacks."""
        out = []
        for resident in self._residency.residents.values():
            config, served = resident.config, resident.served
            info = served.engine.info if served is not None and served.engine is not None else None
            state, adapters = self._residency.state(resident), tuple(self._catalogue.names_on(config.name))
            gguf = info.gguf_sampling if info else self._file_sampling.get(config.path, {})
            sampling = resolve_defaults(gguf, config.sampling_overrides())
            out += [ServedId(model_id, "model" if model_id == config.name else "alias", resident.created, config.name,
                             max_model_len=info.n_ctx if info else config.n_ctx, state=state, model_adapters=adapters,
                             sampling=sampling, chat_format=info.chat_format.name if info else None,
                             model_kind=info.kind if info else self._file_kinds.get(config.path),
                             vision=config.mmproj is not None)
                    for model_id in config.ids()]
        created = {r.name: r.created for r in self._residency.residents.values()}
        out += [ServedId(e.name, "adapter", e.created, e.base, e.base) for e in self._catalogue.entries()]
        out += [ServedId(s.name, "stack", created[s.base], s.base, s.base, adapters=s.adapters)
                for s in self._catalogue.stacks()]
        return out

    async def read_headers(self) -> None:
        """Each model file's sampling defaults and kind from its header (off the loop; cached per version)."""
        for path in {r.config.path for r in self._residency.residents.values()}:
            self._file_sampling[path] = await asyncio.to_thread(read_gguf_sampling, Path(path))
            self._file_kinds[path] = await asyncio.to_thread(file_kind, Path(path))
