"""The drafter interface: what the engine asks of whatever proposes draft tokens for a sequence, and how many it
tries; n-gram lookup (engine/ngram.py) and a draft model (engine/draft.py) implement it, and nothing here knows them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol


class DraftView(Protocol):
    """What a drafter sees of a sequence (engine/sequences.py's Sequence is one)."""

    @property
    def evaluated(self) -> list[int]:
        """The tokens in the sequence's KV."""
        ...

    @property
    def todo(self) -> list[int]:
        """The tokens this step evaluates before any draft."""
        ...

    def set_draft(self, tokens: list[int]) -> None:
        """The drafts this step evaluates after `todo` and verifies when it samples."""
        ...


class DraftSource(Protocol):
    """Something that drafts for several sequences at once (a draft model's shared decodes)."""

    def run(self, budget: int) -> None:
        """Draft for every sequence queued since the last run; at most `budget` tokens catch up with histories."""
        ...


class DraftRound:
    """One step's drafting: the sources that batch their sequences' drafts, each run once every sequence has asked."""

    def __init__(self) -> None:
        self._sources: list[DraftSource] = []

    def join(self, source: DraftSource) -> None:
        if not any(known is source for known in self._sources):
            self._sources.append(source)

    def run(self, budget: int) -> None:
        for source in self._sources:
            source.run(budget)


@dataclass(kw_only=True, eq=False)
class Drafter(ABC):
    """One sequence's drafter, and how many drafts its next step tries.

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

    @abstractmethod
    def propose(self, view: DraftView, limit: int, round_: DraftRound) -> None:
        """Give `view` up to `limit` drafts for this step, now or when `round_` runs (a shared decode joins it).

        `limit` 0: the sequence is still prefilling; a drafter that keeps KV of its own may catch up
        with the prompt, whose tokens are known before the target evaluates them.
        """

    @abstractmethod
    def release(self, keep_cache: bool) -> None:
        """The sequence ended: give back what the drafter holds; its cache stays for a later prompt when `keep_cache`."""
