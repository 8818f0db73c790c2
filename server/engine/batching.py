"""What one engine step evaluates: every next token and its drafts, prompt chunks in the rest of the batch,
grouped per llama_decode, and how they fill a llama_batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .contexts import Context
from .sequences import Phase, Sequence
from .types import AdapterKey

# While other sequences are streaming, a prompt is evaluated in chunks sized so that a step takes
# about PREFILL_STEP_SECONDS: a long prompt then delays each running stream by one short step
# instead of its whole prefill. A fixed 128 tokens was 0.75 s a step on a 2-core CPU evaluating
# ~170 prompt tokens/s (bench/README.md); the first chunks, before any step was timed, take 128.
# The target trades the streams' worst gap against the long prompt's first token: with a stream
# running beside a 4k-token prompt, 0.25 s gave gaps of at most 1.1 s and a 74 s first token,
# 1.0 s gaps of 1.7-1.8 s and 48-53 s (llama-server, unpaced: 20 s gaps, 35 s; bench/README.md).
# Small chunks deep in a prompt cost far more per token (llama-bench: pp32 at depth 4000 runs at
# 27 tok/s, pp128 at depth 3072 at 90): a time-sized chunk shrank as the prompt grew and slowed
# it further, so a chunk is never under 128 tokens (38 s, gaps of at most 1.8 s; 256: 37.5 s, 4 s).
PREFILL_CHUNK_WHILE_DECODING = 128
PREFILL_STEP_SECONDS = 1.0
MIN_PREFILL_CHUNK = 128

Work = list[tuple[Sequence, list[int]]]  # sequences and the tokens each evaluates


@dataclass
class PrefillPacer:
    """The prompt tokens a step evaluates beside running streams, from what steps were measured to cost.

    A step costs a fixed part (the streams' own tokens: llama.cpp computes a prompt chunk in a
    micro-batch of its own) plus its prompt tokens at the prompt rate; the chunk fills what the
    step's time target leaves after the fixed part. Rates are running averages, so a busy machine
    shrinks the chunks and a quiet one grows them.
    """

    decode_seconds: float = 0.0  # a step without prompt tokens
    tokens_per_second: float = 0.0  # prompt tokens over the time they added to their step

    def chunk(self) -> int:
        if not self.tokens_per_second:
            return PREFILL_CHUNK_WHILE_DECODING
        room = max(PREFILL_STEP_SECONDS - self.decode_seconds, 0.0)
        return max(MIN_PREFILL_CHUNK, int(self.tokens_per_second * room))

    def record(self, prompt_tokens: int, seconds: float) -> None:
        """One step: the prompt tokens it evaluated and the time it took."""
        if seconds <= 0:
            return
        if not prompt_tokens:
            self.decode_seconds = _average(self.decode_seconds, seconds)
            return
        extra = seconds - self.decode_seconds
        if extra > 0:
            self.tokens_per_second = _average(self.tokens_per_second, prompt_tokens / extra)


def _average(old: float, new: float) -> float:
    return new if not old else 0.7 * old + 0.3 * new


def plan_step(active: list[Sequence], n_batch: int, contexts: list[Context],
              chunk_while_decoding: int = PREFILL_CHUNK_WHILE_DECODING) -> list[tuple[Context, Work]]:
    """The llama_decode calls of one step, in order: one per context and adapter set.

    Sequences generating get their one token and its drafts; prefilling ones share what is left of `n_batch`.
    """
    decoding = [s for s in active if s.phase is Phase.GENERATING]
    prefilling = [s for s in active if s.phase is Phase.PREFILLING]
    work: Work = [(s, s.todo + s.draft) for s in decoding]
    budget = n_batch - sum(len(tokens) for _, tokens in work)
    chunk_cap = chunk_while_decoding if decoding else budget
    for seq in prefilling:
        take = min(budget, chunk_cap, len(seq.todo))
        if seq.media is not None:  # text up to the next image: its placeholders are evaluated apart (engine/vision.py)
            take = next((i for i, t in enumerate(seq.todo[:take]) if t < 0), take)
            if take == 0:
                continue
        if take <= 0:
            break
        work.append((seq, seq.todo[:take]))
        budget -= take
    groups: dict[tuple[int, AdapterKey], Work] = {}
    for item in work:
        context = item[0].context
        assert context is not None, "only started sequences have work"
        groups.setdefault((context.index, item[0].request.adapters.key), []).append(item)
    # Per context, start with the set already applied: a switch re-reserves llama.cpp's graph.
    order = sorted(groups, key=lambda g: (g[0], g[1] != contexts[g[0]].applied))
    # Increasing sequence ids: llama.cpp puts only consecutive ids in one ubatch, so an
    # unsorted batch of 8 ran as up to 4 ubatches (25 % slower, bench/bench_batch.py).
    return [(contexts[g[0]], sorted(groups[g], key=lambda item: item[0].seq_id)) for g in order]


def fill_batch(batch: Any, work: Work) -> list[tuple[Sequence, int]]:
    """Write `work` into `batch` (a llama_batch); returns each sequence whose logits come back, with the
    batch row of its first: the end of a finished prompt, or a generated token followed by its drafts."""
    n = 0
    outputs: list[tuple[Sequence, int]] = []
    for seq, tokens in work:
        # Logits from the last token of `todo` on, when this call evaluates all of `todo`.
        first_out = len(seq.todo) - 1 if len(tokens) >= len(seq.todo) else len(tokens)
        n_past = seq.n_past
        for j, token in enumerate(tokens):
            batch.token[n] = token
            batch.pos[n] = n_past + j
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq.seq_id
            batch.logits[n] = j >= first_out
            if j == first_out:
                outputs.append((seq, n))
            n += 1
    batch.n_tokens = n
    return outputs
