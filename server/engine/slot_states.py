"""The llama.cpp side of the prompt cache: a slot's KV state saved before another prompt takes the slot, and a saved
state restored into a starting sequence's slot (llama_state_seq_get_data / set_data), on the engine thread."""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable

import llama_cpp

from .contexts import Context
from .generation import EngineStats
from .model import LoadedModel
from .prompt_cache import CachedState, PromptCache, model_identity, state_identity
from .prompt_disk import DiskTier
from .sequences import Sequence
from .types import AdapterKey

log = logging.getLogger(__name__)

Holds = Callable[[Context, int, int], bool]  # PrefixReuse.holds: whether a slot still holds a prefix's KV


class SlotStates:
    """Saves displaced slots into `cache` and restores from it, for one model (`model_identity`) with one KV layout.

    A sequence that asked `cache_prompt: false` is neither saved once its slot goes to another prompt nor
    restored when it starts.
    """

    def __init__(self, cache: PromptCache, model_identity: str, layout: str, stats: EngineStats,
                 disk: DiskTier | None = None) -> None:
        self.cache = cache
        self.disk = disk
        self._model = model_identity
        self._layout = layout
        self._stats = stats
        self._identities: dict[AdapterKey, str] = {}
        self._opted_out: set[tuple[int, int]] = set()  # (context index, slot) whose last request opted out
        self._copies_at_turn = 0

    @classmethod
    def for_model(cls, cache: PromptCache | None, model: LoadedModel, stats: EngineStats) -> SlotStates | None:
        """The prompt cache of `model`'s engine, None when it has none (or its budget is 0)."""
        if cache is None or not cache.enabled:
            return None
        spec = model.spec
        layout = kv_layout(spec.cache_type_k, spec.cache_type_v, spec.flash_attn, model.n_ctx, model.n_swa, spec.swa_full)
        return cls(cache, model_identity(spec.path), layout, stats, cache.disk)

    def identity(self, key: AdapterKey) -> str:
        if key not in self._identities:
            self._identities[key] = state_identity(self._model, self._layout, key)
        return self._identities[key]

    def begin_turn(self) -> None:
        """Called before a turn starts its sequences (see `restore`)."""
        self._copies_at_turn = self._stats.prefix_copies

    def finished(self, seq: Sequence) -> None:
        """`seq` gave its slot back; remember whether what it leaves there may be saved."""
        if seq.context is None or seq.seq_id < 0:
            return
        where = (seq.context.index, seq.seq_id)
        if seq.request.cache_prompt:
            self._opted_out.discard(where)
        else:
            self._opted_out.add(where)

    def save_displaced(self, context: Context, slot: int, held: tuple[AdapterKey, list[int]] | None, keep: int) -> None:
        """Save what `slot` held before its new sequence keeps only `keep` tokens of it, when that throws away
        at least the cache's minimum (a conversation continuing in its own slot loses a few tokens: not saved)."""
        if held is None or (context.index, slot) in self._opted_out or not self.cache.enabled:
            return
        key, tokens = held
        if len(tokens) - keep < self.cache.min_tokens:
            return
        identity = self.identity(key)
        if not self.cache.worth_saving(identity, tokens):
            return
        started = time.perf_counter()
        size = llama_cpp.llama_state_seq_get_size(context.ptr, slot)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(context.ptr, buffer, size, slot)
        if written != size:
            log.warning("prompt cache: llama.cpp wrote %d of %d bytes of slot %d's state; not saved", written, size, slot)
            return
        self.cache.put(CachedState(identity, tuple(tokens), bytes(buffer)))
        self._stats.prompt_cache_saves += 1
        self._stats.prompt_cache_save_seconds += time.perf_counter() - started

    def restore(self, seq: Sequence, context: Context, slot: int, keep: int, holds: Holds) -> int:
        """Restore into `slot` the saved state sharing the longest prefix with `seq`'s prompt, when it is longer
        than the `keep` tokens the slot offers; returns the prompt tokens now in the slot (the caller trims the
        rest). The last prompt token is always evaluated again: its logits start the generation."""
        prompt = seq.prompt
        if not self.cache.enabled or not seq.request.cache_prompt or len(prompt) <= self.cache.min_tokens:
            return keep
        if self._stats.prefix_copies != self._copies_at_turn:
            # A copy made this turn reads its source's cells at the next decode; a restore writes cells now.
            # Another slot may be that source, so nothing is restored until the turn's decode made the copy.
            return keep
        identity = self.identity(seq.request.adapters.key)
        started = time.perf_counter()
        found = self.cache.best(identity, prompt, longer_than=keep)
        if found is None:
            found = self._from_disk(identity, prompt, keep)
        n = min(found[1], len(prompt) - 1) if found else 0
        if found is None or n <= keep:
            self._stats.prompt_cache_misses += 1
            return keep
        entry = found[0]
        buffer = (ctypes.c_uint8 * entry.size).from_buffer_copy(entry.state)
        if llama_cpp.llama_state_seq_set_data(context.ptr, buffer, entry.size, slot) == 0:
            # set_data cleared the slot before it refused: what it held is gone.
            log.warning("prompt cache: llama.cpp refused a saved %d-token state; dropped", len(entry.tokens))
            self.cache.discard(entry)
            llama_cpp.llama_memory_seq_rm(context.memory, slot, -1, -1)
            self._stats.prompt_cache_misses += 1
            return 0
        if not holds(context, slot, n):
            llama_cpp.llama_memory_seq_rm(context.memory, slot, -1, -1)
            self._stats.prompt_cache_misses += 1
            return 0
        self._stats.prompt_cache_hits += 1
        self._stats.prompt_cache_restored_tokens += n
        self._stats.prompt_cache_restore_seconds += time.perf_counter() - started
        return n

    def _from_disk(self, identity: str, prompt: list[int], keep: int) -> tuple[CachedState, int] | None:
        """The disk tier's longest match beyond `keep`, read back into the RAM tier (a later return finds it there)."""
        hit = self.disk.best(identity, prompt) if self.disk is not None else None
        if hit is None or hit.matched <= keep:
            return None
        state = self.disk.load(hit) if self.disk is not None else None
        if state is None:
            return None
        entry = CachedState(identity, tuple(prompt[:hit.matched]) if hit.matched == hit.n_tokens else (), state)
        if entry.tokens:  # its tokens past the match are not known here: kept in RAM only when it matched whole
            self.cache.put(entry)
        return entry, hit.matched


def kv_layout(type_k: str, type_v: str, flash_attn: str, n_ctx: int, n_swa: int, swa_full: bool) -> str:
    """What changes a sequence state's layout: llama.cpp refuses a state read into another (and says so in the
    log); keyed apart, it is never tried."""
    return f"k={type_k};v={type_v};fa={flash_attn};n_ctx={n_ctx};n_swa={n_swa};swa_full={swa_full}"
