"""The prompt cache's RAM tier: KV states of sequences saved when their slot went to another prompt, keyed by what
makes a state valid, matched by token prefix, evicted least recently used under a byte budget.

It holds copies only: a restore copies a state into a slot (llama_state_seq_set_data), so a running sequence never
needs an entry and any entry may be evicted at any time. Plain Python, used on the engine thread alone; the
llama.cpp side (reading and writing a slot's state) is engine/slot_states.py.
"""

from __future__ import annotations

import collections
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .contexts import common_prefix
from .prompt_disk import DiskTier
from .types import AdapterKey

log = logging.getLogger(__name__)

# A state shorter than this is not saved: its prefill costs about as much as the bookkeeping (and 64 tokens are
# about 0.5 s of prefill on a CPU), and short prompts would crowd the budget with entries nobody returns to.
MIN_TOKENS = 64
# Bytes of a model file hashed into its identity, beside its size and mtime: the GGUF header and the start of the
# tensor data, so a file replaced under the same name and size is told apart without reading gigabytes.
HEADER_BYTES = 1 << 20


@dataclass(frozen=True, eq=False)
class CachedState:
    """One saved sequence: the identity it is valid under, the tokens its KV holds, and llama.cpp's state bytes."""

    identity: str
    tokens: tuple[int, ...]
    state: bytes

    @property
    def size(self) -> int:
        return len(self.state)


def model_identity(path: Path) -> str:
    """A model file's identity: its resolved path, size, mtime and the hash of its first HEADER_BYTES."""
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    with path.open("rb") as file:
        digest.update(file.read(HEADER_BYTES))
    return digest.hexdigest()


def state_identity(model: str, layout: str, adapters: AdapterKey) -> str:
    """The key a state is saved and found under: the model file's identity, the KV layout (cache types, cells per
    sequence, sliding window) and the adapter set (content hashes and scales: the prefix cache's own key)."""
    parts = [model, layout, *(f"{content_hash}@{scale!r}" for content_hash, scale in adapters)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class PromptCache:
    """States in RAM, least recently used first, under `budget` bytes; `spill` receives what is evicted (the disk
    tier, when there is one); `disk` is that tier, where a restore looks when RAM has no match."""

    def __init__(self, budget: int, *, min_tokens: int = MIN_TOKENS,
                 spill: Callable[[CachedState], None] | None = None, disk: DiskTier | None = None) -> None:
        self.budget = budget
        self.disk = disk
        self.min_tokens = min_tokens
        self._spill = spill
        self._entries: collections.OrderedDict[int, CachedState] = collections.OrderedDict()
        self.bytes = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def __len__(self) -> int:
        return len(self._entries)

    def worth_saving(self, identity: str, tokens: Sequence[int]) -> bool:
        """Whether saving `tokens` adds anything: long enough, and not a prefix of an entry already held."""
        if not self.enabled or len(tokens) < self.min_tokens:
            return False
        n = len(tokens)
        return not any(e.identity == identity and len(e.tokens) >= n and e.tokens[:n] == tuple(tokens)
                       for e in self._entries.values())

    def put(self, entry: CachedState) -> None:
        """Hold `entry`, dropping the entries it extends and evicting the least recently used until it fits."""
        if entry.size > self.budget:
            log.info("prompt cache: a %d-token state of %d bytes exceeds prompt_cache_ram (%d bytes); not kept",
                     len(entry.tokens), entry.size, self.budget)
            self._send(entry)
            return
        for key, held in list(self._entries.items()):
            if held.identity == entry.identity and entry.tokens[:len(held.tokens)] == held.tokens:
                self._remove(key)  # superseded: the new entry continues it
        while self.bytes + entry.size > self.budget and self._entries:
            self._send(self._remove(next(iter(self._entries))))
            self.evictions += 1
        self._entries[id(entry)] = entry
        self.bytes += entry.size

    def best(self, identity: str, prompt: Sequence[int], longer_than: int) -> tuple[CachedState, int] | None:
        """The entry under `identity` sharing the longest prefix with `prompt`, if longer than `longer_than`
        tokens, and that length; it becomes the most recently used."""
        found: tuple[CachedState, int] | None = None
        listed = list(prompt)
        for entry in self._entries.values():
            if entry.identity == identity:
                n = common_prefix(list(entry.tokens), listed)
                if n > (found[1] if found else longer_than):
                    found = (entry, n)
        if found is not None:
            self._entries.move_to_end(id(found[0]))
        return found

    def discard(self, entry: CachedState) -> None:
        """Forget an entry llama.cpp refused to restore."""
        if id(entry) in self._entries:
            self._remove(id(entry))

    def drain(self) -> list[CachedState]:
        """Every entry, least recently used first, handed to the spill (an unload) and forgotten."""
        entries = list(self._entries.values())
        self._entries.clear()
        self.bytes = 0
        for entry in entries:
            self._send(entry)
        return entries

    def _remove(self, key: int) -> CachedState:
        entry = self._entries.pop(key)
        self.bytes -= entry.size
        return entry

    def _send(self, entry: CachedState) -> None:
        if self._spill is not None:
            self._spill(entry)
