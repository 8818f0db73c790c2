"""The llama.cpp contexts of one model, each with its sequence slots and its applied adapter set."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from .errors import EngineError
from .types import AdapterKey, AdapterSet


@dataclass(eq=False)
class Context:
    """One llama.cpp context (`ptr`): `parallel` sequence slots in one KV pool, and the adapter set it applies.

    Busy adapter sets get a context each where the model allows it, so no step changes a context's
    set: a change makes llama.cpp re-reserve its compute graph (3-5 ms, docs/architecture.md).
    """

    index: int
    ptr: Any  # llama_context *
    memory: Any
    free_ids: list[int]
    # What each idle slot still holds in its KV: (adapter set key, tokens).
    slot_cache: dict[int, tuple[AdapterKey, list[int]]] = field(default_factory=dict)
    applied: AdapterKey = ()  # the key of the set llama.cpp applies now
    ever_set: bool = False
    decoded: bool = False  # has computed anything: setting its first set is then a real switch
    active_keys: dict[AdapterKey, int] = field(default_factory=dict)  # adapter set key -> running sequences

    @classmethod
    def open(cls, index: int, ptr: Any, parallel: int) -> Context:
        return cls(index=index, ptr=ptr, memory=llama_cpp.llama_get_memory(ptr), free_ids=list(range(parallel)))

    @property
    def busy(self) -> bool:
        return bool(self.active_keys)

    def caches(self, key: AdapterKey) -> bool:
        return any(cached[0] == key for cached in self.slot_cache.values())

    def join(self, key: AdapterKey) -> None:
        self.active_keys[key] = self.active_keys.get(key, 0) + 1

    def leave(self, key: AdapterKey) -> None:
        left = self.active_keys[key] - 1
        if left:
            self.active_keys[key] = left
        else:
            del self.active_keys[key]

    def take_slot(self, key: AdapterKey, prompt: list[int]) -> tuple[int, int]:
        """Claim the free slot whose cached KV shares the longest prefix with `prompt` under `key`.

        Returns the slot and how many prompt tokens its KV already holds (the caller trims the rest).
        """

        def score(slot: int) -> tuple[int, int]:
            cached = self.slot_cache.get(slot)
            if cached is None:
                return 0, 0
            if cached[0] != key:
                return -1, -len(cached[1])  # KV computed under another adapter set is never reused
            # Ties go to the slot holding the least, keeping longer caches for later requests.
            return common_prefix(cached[1], prompt), -len(cached[1])

        # Among equals the lowest id: llama.cpp splits a batch into one ubatch per run of
        # consecutive sequence ids (with a KV stream per sequence), so compact ids mean fewer.
        best = max(sorted(self.free_ids), key=score)
        reused = max(score(best)[0], 0)
        self.free_ids.remove(best)
        self.slot_cache.pop(best, None)
        self.join(key)
        return best, reused

    def apply(self, adapters: AdapterSet) -> bool:
        """Make `adapters` the context's set; True when that replaced a set already used to decode."""
        key = adapters.key
        if key == self.applied:
            return False
        n = len(adapters.adapters)
        if n == 0 and not self.ever_set:
            return False  # clearing a context that never had adapters segfaults (docs/architecture.md)
        handles = (llama_cpp.llama_adapter_lora_p_ctypes * max(n, 1))(*[a.handle.ptr for a in adapters.adapters])
        scales = (ctypes.c_float * max(n, 1))(*[a.scale for a in adapters.adapters])
        rc = llama_cpp.llama_set_adapters_lora(self.ptr, handles, n, scales)
        if rc != 0:
            raise EngineError(f"llama_set_adapters_lora failed (code {rc})")
        self.applied = key
        self.ever_set = True
        return self.decoded

    def clear_if_using(self, content_hash: str) -> None:
        """Switch the adapters off before an adapter they include is freed."""
        if any(h == content_hash for h, _ in self.applied):
            llama_cpp.llama_set_adapters_lora(self.ptr, None, 0, None)
            self.applied = ()


def choose_context(contexts: list[Context], key: AdapterKey, can_open: bool) -> Context | None:
    """The context a new sequence under `key` runs in; None means: open a new context for it.

    In order: a context already running that set; an idle context that has it applied or cached;
    any idle context; a new context while the model allows more; else the context running the
    fewest sets, which then changes its set between calls.
    """
    running = [c for c in contexts if key in c.active_keys]
    if running:
        return running[0]
    idle = [c for c in contexts if not c.busy]
    if idle:
        return max(idle, key=lambda c: (c.applied == key, c.caches(key), -c.index))
    if can_open:
        return None
    return min(contexts, key=lambda c: (len(c.active_keys), sum(c.active_keys.values()), c.index))


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
