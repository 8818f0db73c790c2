"""A sequence's place in a context: its slot, the prompt prefix it reuses (cached or copied), and giving both back."""

from __future__ import annotations

from dataclasses import dataclass, field

import llama_cpp

from .contexts import Context, common_prefix
from .generation import EngineStats, Generation
from .sampling import SamplerChain
from .speculative import Drafter
from .stops import TextAssembler
from .types import GenerationRequest

# Prompt tokens whose prefill costs as much as copying a 4096-cell KV stream between sequences
# (bench/bench_prefix_copy.py); the copy cost scales with the cells per sequence.
COPY_BREAK_EVEN_TOKENS_PER_4K = 16


@dataclass(eq=False)
class Sequence:
    """One admitted request as the engine's worker thread advances it."""

    gen: Generation
    prompt: list[int]
    max_new: int
    sampler: SamplerChain
    assembler: TextAssembler
    context: Context | None = None
    seq_id: int = -1
    n_past: int = 0
    n_cached: int = 0  # prompt tokens whose KV was reused from an earlier request
    todo: list[int] = field(default_factory=list)
    evaluated: list[int] = field(default_factory=list)  # every token now in this sequence's KV
    n_generated: int = 0
    drafter: Drafter | None = None  # speculation on: proposes `draft` before each decode
    draft: list[int] = field(default_factory=list)  # evaluated after `todo` this step, verified when sampled

    @property
    def request(self) -> GenerationRequest:
        return self.gen.request


@dataclass(frozen=True)
class PrefixReuse:
    """Whether a starting sequence reuses KV computed before, and when copying another slot's KV pays."""

    enabled: bool
    # A copy moves a whole KV stream, n_ctx cells: worth it past this many tokens saved.
    copy_min_tokens: int

    @classmethod
    def for_context(cls, enabled: bool, n_ctx: int) -> PrefixReuse:
        """The policy for sequences of `n_ctx` cells each."""
        return cls(enabled=enabled, copy_min_tokens=max(1, round(COPY_BREAK_EVEN_TOKENS_PER_4K * n_ctx / 4096)))


def place(seq: Sequence, context: Context, running: list[Sequence], reuse: PrefixReuse, stats: EngineStats) -> None:
    """Give `seq` a slot of `context`, reusing the longest cached prefix of its prompt.

    A request takes the slot sharing its longest prefix under the same adapter set, as
    llama.cpp's server does, and evaluates only the rest.
    """
    slot, cached = context.take_slot(seq.request.adapters.key, seq.prompt)
    seq.context, seq.seq_id = context, slot
    # At least the last prompt token is evaluated again: its logits start the generation.
    keep = min(cached, len(seq.prompt) - 1) if reuse.enabled else 0
    if reuse.enabled:
        keep = _copy_prefix(seq, keep, running, reuse.copy_min_tokens, stats)
    llama_cpp.llama_memory_seq_rm(context.memory, slot, keep, -1)
    seq.n_past = seq.n_cached = keep
    seq.evaluated = seq.prompt[:keep]
    seq.todo = seq.prompt[keep:]
    stats.prompt_tokens += len(seq.prompt)
    stats.cached_tokens += keep


def _copy_prefix(seq: Sequence, keep: int, running: list[Sequence], copy_min_tokens: int, stats: EngineStats) -> int:
    """Copy a longer prefix of the prompt from another slot of the context, when that beats prefilling it.

    Another slot, idle or running, may hold more of this prompt under the same adapter set
    (eight clients sharing a system prompt, say). With a KV stream per sequence llama.cpp
    copies the source's whole stream (`llama_memory_seq_cp` must take all positions), a cost
    fixed by n_ctx; prefilling grows with the prompt. So a copy is made only when it saves at
    least `copy_min_tokens` (bench/bench_prefix_copy.py). Returns the tokens now reused.
    """
    key, context = seq.request.adapters.key, seq.context
    assert context is not None, "placed before its prefix is looked for"
    holders = [(slot, cached[1]) for slot, cached in context.slot_cache.items() if cached[0] == key]
    holders += [(s.seq_id, s.evaluated) for s in running if s.context is context and s.request.adapters.key == key]
    best_src, best_len = None, keep
    for slot, tokens in holders:
        if slot == seq.seq_id:
            continue
        n = min(common_prefix(tokens, seq.prompt), len(seq.prompt) - 1)
        if n > best_len:
            best_src, best_len = slot, n
    if best_src is None or best_len - keep < copy_min_tokens:
        return keep
    # The whole stream comes over (its data at the next decode, before anything is computed);
    # the caller trims what follows the shared prefix.
    llama_cpp.llama_memory_seq_cp(context.memory, best_src, seq.seq_id, -1, -1)
    stats.prefix_copies += 1
    return best_len


def release(seq: Sequence, keep_cache: bool) -> None:
    """Give back the slot (if `place` got that far), the draft model's slot and the sampler; the slots' KV stays as a
    cache when `keep_cache`."""
    context = seq.context
    if context is not None and seq.seq_id >= 0:
        if keep_cache and seq.evaluated:
            context.slot_cache[seq.seq_id] = (seq.request.adapters.key, seq.evaluated)
        else:
            llama_cpp.llama_memory_seq_rm(context.memory, seq.seq_id, -1, -1)
            context.slot_cache.pop(seq.seq_id, None)
        context.leave(seq.request.adapters.key)
        context.free_ids.append(seq.seq_id)
    if seq.drafter is not None:
        seq.drafter.release(keep_cache)
    seq.sampler.close()
