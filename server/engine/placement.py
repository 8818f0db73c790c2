"""Where a starting sequence goes: a slot of a context, and the prompt prefix it reuses there (cached or copied)."""

from __future__ import annotations

from dataclasses import dataclass

import llama_cpp

from .contexts import Context, common_prefix
from .generation import EngineStats
from .sequences import Sequence
from .slot_states import SlotStates

# Prompt tokens whose prefill costs as much as copying a 4096-cell KV stream between sequences
# (bench/bench_prefix_copy.py); the copy cost scales with the cells per sequence.
COPY_BREAK_EVEN_TOKENS_PER_4K = 16


@dataclass(frozen=True)
class PrefixReuse:
    """Whether a starting sequence reuses KV computed before, and when copying another slot's KV pays."""

    enabled: bool
    # A copy moves a whole KV stream, n_ctx cells: worth it past this many tokens saved.
    copy_min_tokens: int
    n_swa: int = 0  # the model's sliding window (0: none)

    @classmethod
    def for_context(cls, enabled: bool, n_ctx: int, n_swa: int = 0) -> PrefixReuse:
        """The policy for sequences of `n_ctx` cells each."""
        return cls(enabled=enabled, copy_min_tokens=max(1, round(COPY_BREAK_EVEN_TOKENS_PER_4K * n_ctx / 4096)),
                   n_swa=n_swa)

    def holds(self, context: Context, slot: int, n: int) -> bool:
        """Whether `slot` still holds the KV that continuing after its first `n` tokens attends to.

        A sliding-window cache without swa_full drops positions older than the window as a sequence
        grows, and llama.cpp cannot compute them again from what remains: a prefix is continued only
        where no dropped position is within the window of its end, the check llama.cpp's server makes
        (seq_pos_min against n_past - n_swa) before it reuses a slot. A full cache always holds them.
        """
        if n <= 0:
            return True
        oldest: int = llama_cpp.llama_memory_seq_pos_min(context.memory, slot)
        return oldest <= max(0, n - max(1, self.n_swa))


def place(seq: Sequence, context: Context, running: list[Sequence], reuse: PrefixReuse, stats: EngineStats,
          states: SlotStates | None = None) -> None:
    """Give `seq` a slot of `context`, reusing the longest cached prefix of its prompt.

    A request takes the slot sharing its longest prefix under the same adapter set, as
    llama.cpp's server does, and evaluates only the rest. With a prompt cache (`states`), what the slot
    held is saved first when the new prompt throws it away, and a longer prefix saved there is restored.
    """
    held = context.slot_cache.get  # read before take_slot forgets the slot's content
    before = {slot: held(slot) for slot in context.free_ids} if states is not None else {}
    slot, cached = context.take_slot(seq.request.adapters.key, seq.prompt)
    seq.place(context, slot)
    # At least the last prompt token is evaluated again: its logits start the generation.
    keep = min(cached, len(seq.prompt) - 1) if reuse.enabled else 0
    if not reuse.holds(context, slot, keep):
        keep = 0  # evaluated again from the start, as llama.cpp's server does
    if states is not None:
        states.save_displaced(context, slot, before.get(slot), keep)
        keep = states.restore(seq, context, slot, keep, reuse.holds)
    if reuse.enabled:
        keep = _copy_prefix(seq, context, keep, running, reuse, stats)
    llama_cpp.llama_memory_seq_rm(context.memory, slot, keep, -1)
    seq.start(keep)
    stats.prompt_tokens += len(seq.prompt)
    stats.cached_tokens += keep


def _copy_prefix(seq: Sequence, context: Context, keep: int, running: list[Sequence], reuse: PrefixReuse,
                 stats: EngineStats) -> int:
    """Copy a longer prefix of the prompt from another slot of the context, when that beats prefilling it.

    Another slot, idle or running, may hold more of this prompt under the same adapter set
    (eight clients sharing a system prompt, say). With a KV stream per sequence llama.cpp
    copies the source's whole stream (`llama_memory_seq_cp` must take all positions), a cost
    fixed by n_ctx; prefilling grows with the prompt. So a copy is made only when it saves at
    least `reuse.copy_min_tokens` (bench/bench_prefix_copy.py), from a slot that still holds it
    (`PrefixReuse.holds`). Returns the tokens now reused.
    """
    key = seq.request.adapters.key
    holders = [(slot, cached[1]) for slot, cached in context.slot_cache.items() if cached[0] == key]
    holders += [(s.seq_id, s.evaluated) for s in running if s.context is context and s.request.adapters.key == key]
    best_src, best_len = None, keep
    for slot, tokens in holders:
        if slot == seq.seq_id:
            continue
        n = min(common_prefix(tokens, seq.prompt), len(seq.prompt) - 1)
        if n > best_len and reuse.holds(context, slot, n):
            best_src, best_len = slot, n
    if best_src is None or best_len - keep < reuse.copy_min_tokens:
        return keep
    # The whole stream comes over (its data at the next decode, before anything is computed);
    # the caller trims what follows the shared prefix.
    llama_cpp.llama_memory_seq_cp(context.memory, best_src, seq.seq_id, -1, -1)
    stats.prefix_copies += 1
    return best_len
