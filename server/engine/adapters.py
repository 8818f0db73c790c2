"""A LoRA adapter loaded on one model: what the engine holds and frees."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp

from .contexts import Context
from .errors import AdapterRejected
from .types import GenerationRequest

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LoraAdapter:
    """One adapter file loaded on one base model. `ptr` is llama.cpp's `llama_adapter_lora *`."""

    name: str
    source: Path  # what the user named: a GGUF file or a PEFT directory
    gguf_path: Path  # what llama.cpp loaded
    content_hash: str
    ptr: Any = field(default=None, repr=False)
    unloading: bool = False


def load_lora(model: Any, model_name: str, name: str, source: Path, gguf_path: Path, content_hash: str) -> LoraAdapter:
    """Load an adapter file on `model` (a llama_model *); on the engine thread."""
    ptr = llama_cpp.llama_adapter_lora_init(model, str(gguf_path).encode())
    if not ptr:
        raise AdapterRejected(f"{source}: llama.cpp refused the adapter for model {model_name!r} (see the log)")
    return LoraAdapter(name=name, source=source, gguf_path=gguf_path, content_hash=content_hash, ptr=ptr)


class Unloads:
    """The adapters marked for unloading on one engine, each freed once no admitted request uses it: the event loop
    marks (`marked.append`), the worker takes the unused ones; both under the engine's lock."""

    def __init__(self) -> None:
        self.marked: list[LoraAdapter] = []

    # `requests` (every admitted request) is asked only while some adapter is marked: most turns mark none.
    def any_unused(self, requests: Callable[[], list[GenerationRequest]]) -> bool:
        """Some marked adapter no request uses: work for the worker (one still used is not: it would spin)."""
        return bool(self.marked and _split_unused(self.marked, requests())[0])

    def take_unused(self, requests: Callable[[], list[GenerationRequest]]) -> list[LoraAdapter]:
        """Take the marked adapters no request uses, to be freed."""
        if not self.marked:
            return []
        unused, self.marked = _split_unused(self.marked, requests())
        return unused


def _split_unused(to_free: list[LoraAdapter], requests: list[GenerationRequest]) -> tuple[list[LoraAdapter], list[LoraAdapter]]:
    """The adapters marked for unloading that none of `requests` uses, and those still in use."""
    in_use = {id(a.handle) for r in requests for a in r.adapters.adapters}
    return [a for a in to_free if id(a) not in in_use], [a for a in to_free if id(a) in in_use]


def free_lora(adapter: LoraAdapter, contexts: list[Context], model_name: str) -> None:
    """Free an adapter no sequence uses, switching off any context still pointing at it first."""
    for context in contexts:
        context.clear_if_using(adapter.content_hash)
    llama_cpp.llama_adapter_lora_free(adapter.ptr)
    adapter.ptr = None
    log.info("freed adapter %s on %s", adapter.name, model_name)
