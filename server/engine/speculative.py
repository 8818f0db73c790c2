"""Speculative decoding: who drafts (prompt lookup from a sequence's own tokens, or a draft model), how many
drafts to try next, and verifying them.

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import llama_cpp

from .generation import EngineStats
from .types import Speculation

if TYPE_CHECKING:
    from .draft import DraftModel
    from .sequences import Sequence

# The n-gram looked up: a draft is proposed only where the sequence's last NGRAM tokens occurred
# before. On a CPU a wrong draft costs nearly a decoded token (verifying 2 tokens takes 1.8 single
# decodes, 9 tokens 5.5: docs/architecture.md), so drafts must come from long matches. In one
# free-chat answer, n-grams of 4, 3 and 2 drafted 98 tokens and 51 were accepted (0.88-0.96x no
# speculation, in process); 6-grams drafted 48, 32 accepted (0.99-1.03x), and a copied paragraph
# kept its 1.7-1.8x (bench/README.md). llama-server's `ngram-simple` looks up 12 by default.
NGRAM = 6


@dataclass(kw_only=True)
class Drafter:
    """What every drafter shares: how many drafts the next step tries.

    Doubled after a draft accepted whole, cut back to what was accepted (plus one) after a miss,
    so text the drafter stops predicting costs little; never over `n_max`.
    """

    n_max: int
    budget: int = 2

    def limit(self, room: int) -> int:
        """The drafts to propose this step, when the sequence has room for `room`."""
        return min(room, self.budget, self.n_max)

    def record(self, drafted: int, accepted: int) -> None:
        if not drafted:
            return
        if accepted == drafted:
            self.budget = min(self.n_max, 2 * self.budget)
        else:
            self.budget = max(1, accepted + 1)

    def release(self, keep_cache: bool) -> None:
        """The sequence ended: give back what the drafter holds (nothing, unless it overrides this)."""


@dataclass(kw_only=True)
class NgramDrafter(Drafter):
    """Finds the latest earlier occurrence of a sequence's last NGRAM tokens and proposes what followed it.

    `index` maps each n-gram of the history to where the token after its latest occurrence sits,
    so a lookup is a dict probe whatever the prompt's length; `extend` keeps it current.
    """

    tokens: list[int] = field(default_factory=list)
    index: dict[tuple[int, ...], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A 6-token match is strong evidence that the text is being copied, so the first draft is a
        # whole n_max rather than 2 doubled per step; a miss cuts it back as for any drafter.
        self.budget = self.n_max

    def extend(self, tokens: list[int]) -> None:
        history = self.tokens
        for token in tokens:
            end = len(history)
            if end >= NGRAM:
                self.index[tuple(history[end - NGRAM:end])] = end  # the n-gram ending here is followed by `token`
            history.append(token)

    def sync(self, history: list[int]) -> None:
        """Catch up with a history that only ever grew (the prompt, then each emitted token)."""
        if len(history) > len(self.tokens):
            self.extend(history[len(self.tokens):])

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the history's last NGRAM tokens."""
        limit = self.limit(limit)
        if limit <= 0:
            return []
        history = self.tokens
        if len(history) <= NGRAM:
            return []
        start = self.index.get(tuple(history[-NGRAM:]))
        return [] if start is None else history[start:start + limit]


@dataclass(kw_only=True)
class ModelDrafter(Drafter):
    """A sequence's place in its draft model (engine/draft.py): the draft context's slot it holds, -1 for none yet.

    The draft model proposes for every drafting sequence at once, so this holds no drafting logic.
    """

    source: DraftModel
    slot: int = -1

    def release(self, keep_cache: bool) -> None:
        self.source.release(self, keep_cache)


def drafter_for(speculation: Speculation, draft_model: DraftModel | None) -> Drafter | None:
    """The drafter a request (or its model's default) asks for: n-gram lookup, the model's draft model, or none."""
    if not speculation.n_max:
        return None
    if speculation.type == "ngram":
        return NgramDrafter(n_max=speculation.n_max)
    if speculation.type == "draft" and draft_model is not None:
        return ModelDrafter(n_max=speculation.n_max, source=draft_model)
    return None


def verify(seq: Sequence, row: int, sample: Callable[[int], int | None], stats: EngineStats) -> None:
    """Sample `seq` from batch row `row` on, one row per draft, while each sampled token is the draft.

    `sample(row)` samples and emits one token, returning it, or None when it ended the sequence
    (whose slot is then released: what the rows beyond hold goes with it). The accepted drafts
    join the sequence's KV; the rejected ones are removed from it, the last sampled token is next.
    """
    drafts, seq.draft = seq.draft, []
    accepted = 0
    for i in range(len(drafts) + 1):
        token = sample(row + i)
        if token is None:
            break
        if i < len(drafts) and token == drafts[i]:
            accepted += 1
            seq.evaluated.append(token)  # its KV was computed in this decode
            seq.n_past += 1
            continue
        seq.todo = [token]
        if accepted < len(drafts):  # the rejected drafts' KV must not be attended to
            assert seq.context is not None, "only started sequences are sampled"
            llama_cpp.llama_memory_seq_rm(seq.context.memory, seq.seq_id, seq.n_past, -1)
        break
    if drafts and seq.drafter is not None:
        seq.drafter.record(len(drafts), accepted)
        stats.drafted_tokens += len(drafts)
        stats.accepted_tokens += accepted
