"""Speculative decoding: which drafter a sequence gets (engine/ngram.py's prompt lookup or engine/draft.py's draft
model, behind engine/drafting.py's interface), asking for each step's drafts, and verifying them.

Drafts ride in the sequence's place of the shared batch, with logits at every position; the engine
then samples row by row with the sequence's own sampler and stops at the first sampled token that
is not the draft. Every token it samples is one it emits, conditioned on exactly the tokens before
it, so the sampler's state (grammar, penalties, its random stream) advances over emitted tokens
only, and the output keeps the model's distribution: greedy picks are the model's own, and a
sampled row accepts draft t with probability p(t) and otherwise draws from p without t, which is
speculative sampling for a draft that puts all its mass on one token.
"""

from __future__ import annotations

from collections.abc import Callable

from .draft import DraftModel
from .drafting import Drafter, DraftRound
from .generation import EngineStats
from .ngram import NgramDrafter
from .sequences import Phase, Sequence
from .types import Speculation


def drafter_for(speculation: Speculation, draft_model: DraftModel | None) -> Drafter | None:
    """The drafter a request (or its model's default) asks for: n-gram lookup, the model's draft model, or none."""
    if not speculation.n_max:
        return None
    if speculation.type == "ngram":
        return NgramDrafter(n_max=speculation.n_max)
    if speculation.type == "draft" and draft_model is not None:
        return draft_model.drafter(speculation.n_max)
    return None


def propose_drafts(active: list[Sequence], n_batch: int, n_ctx: int, chunk_while_decoding: int) -> None:
    """Give each generating sequence that speculates its drafts for this step.

    Never more than it may still generate (the last token of a step is always sampled), than its
    context has cells for, or than a fair share of the batch. A draft model drafts for all its
    sequences at once, and catches up with prompts at most `chunk_while_decoding` tokens per step
    while others generate.
    """
    decoding = [s for s in active if s.phase is Phase.GENERATING]
    share = n_batch // (2 * max(1, len(decoding))) - 1  # half the batch stays for prompts
    round_ = DraftRound()
    for seq in decoding:
        if seq.drafter is None:
            continue
        limit = seq.drafter.limit(min(seq.max_new - seq.n_generated - 1, n_ctx - seq.n_past - 1, share))
        if limit > 0:
            seq.drafter.propose(seq, limit, round_)
    for seq in active:
        if seq.phase is Phase.PREFILLING and seq.drafter is not None:
            seq.drafter.propose(seq, 0, round_)
    round_.run(chunk_while_decoding if decoding else n_batch)


def verify(seq: Sequence, row: int, sample: Callable[[int], int | None], stats: EngineStats) -> None:
    """Sample `seq` from batch row `row` on, one row per draft, while each sampled token is the draft.

    `sample(row)` samples and emits one token, returning it, or None when it ended the sequence
    (whose slot is then released: what the rows beyond hold goes with it). The accepted drafts
    join the sequence's KV; the rejected ones are removed from it, the last sampled token is next.
    """
    drafts = seq.take_draft()
    accepted = 0
    for i in range(len(drafts) + 1):
        token = sample(row + i)
        if token is None:
            break
        if i < len(drafts) and token == drafts[i]:
            accepted += 1
            seq.accept(token)
            continue
        seq.feed(token)
        if accepted < len(drafts):
            seq.reject_drafts()
        break
    if drafts and seq.drafter is not None:
        seq.drafter.record(len(drafts), accepted)
        stats.drafted_tokens += len(drafts)
        stats.accepted_tokens += accepted
