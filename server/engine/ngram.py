"""Prompt-lookup drafting: a sequence's next tokens proposed from what followed an earlier occurrence of its last
NGRAM tokens, in its own prompt or output."""

from __future__ import annotations

from dataclasses import dataclass, field

from .drafting import Drafter, DraftRound, DraftView

# The n-gram looked up: a draft is proposed only where the sequence's last NGRAM tokens occurred
# before. On a CPU a wrong draft costs nearly a decoded token (verifying 2 tokens takes 1.8 single
# decodes, 9 tokens 5.5: docs/architecture.md), so drafts must come from long matches. In one
# free-chat answer, n-grams of 4, 3 and 2 drafted 98 tokens and 51 were accepted (0.88-0.96x no
# speculation, in process); 6-grams drafted 48, 32 accepted (0.99-1.03x), and a copied paragraph
# kept its 1.7-1.8x (bench/README.md). llama-server's `ngram-simple` looks up 12 by default.
NGRAM = 6


@dataclass(kw_only=True, eq=False)
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

    def propose(self, view: DraftView, limit: int, round_: DraftRound) -> None:
        if limit <= 0:  # the history is read lazily, so a prefilling sequence has nothing to catch up
            return
        self.sync(view.evaluated, view.todo)
        view.set_draft(self.draft(limit))

    def release(self, keep_cache: bool) -> None:
        """Nothing to give back: the index lives and dies with the sequence."""

    def extend(self, tokens: list[int]) -> None:
        history = self.tokens
        for token in tokens:
            end = len(history)
            if end >= NGRAM:
                self.index[tuple(history[end - NGRAM:end])] = end  # the n-gram ending here is followed by `token`
            history.append(token)

    def sync(self, evaluated: list[int], todo: list[int]) -> None:
        """Catch up with the history `evaluated + todo`, which only ever grew (the prompt, then each emitted token)."""
        seen, n_evaluated = len(self.tokens), len(evaluated)
        if seen < n_evaluated:
            self.extend(evaluated[seen:])
            seen = n_evaluated
        if seen - n_evaluated < len(todo):
            self.extend(todo[seen - n_evaluated:])

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the history's last NGRAM tokens."""
        history = self.tokens
        if limit <= 0 or len(history) <= NGRAM:
            return []
        start = self.index.get(tuple(history[-NGRAM:]))
        return [] if start is None else history[start:start + limit]
