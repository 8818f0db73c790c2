"""What one engine step evaluates: every next token, prompt chunks in the rest of the batch, grouped per llama_decode."""

from __future__ import annotations

from .contexts import Context
from .sequences import Sequence

# While other sequences are streaming, a prompt is evaluated this many tokens per step, so a
# long prompt delays each running stream by one short step instead of its whole prefill.
PREFILL_CHUNK_WHILE_DECODING = 128

Work = list[tuple[Sequence, list[int]]]  # sequences and the tokens each evaluates


def plan_step(active: list[Sequence], n_batch: int, contexts: list[Context]) -> list[tuple[Context, Work]]:
    """The llama_decode calls of one step, in order: one per context and adapter set.

    Sequences generating get their one token; prefilling ones share what is left of `n_batch`.
    """
    decoding = [s for s in active if len(s.todo) == 1]
    prefilling = [s for s in active if len(s.todo) > 1]
    budget = n_batch - len(decoding)
    chunk_cap = PREFILL_CHUNK_WHILE_DECODING if decoding else budget
    work: Work = [(s, s.todo) for s in decoding]
    for seq in prefilling:
        take = min(budget, chunk_cap, len(seq.todo))
        if take <= 0:
            break
        work.append((seq, seq.todo[:take]))
        budget -= take
    groups: dict[tuple[int, tuple], Work] = {}
    for item in work:
        context = item[0].context
        assert context is not None, "only started sequences have work"
        groups.setdefault((context.index, item[0].request.adapters.key), []).append(item)
    # Per context, start with the set already applied: a switch re-reserves llama.cpp's graph.
    order = sorted(groups, key=lambda g: (g[0], g[1] != contexts[g[0]].applied))
    # Increasing sequence ids: llama.cpp puts only consecutive ids in one ubatch, so an
    # unsorted batch of 8 ran as up to 4 ubatches (25 % slower, bench/bench_batch.py).
    return [(contexts[g[0]], sorted(groups[g], key=lambda item: item[0].seq_id)) for g in order]
