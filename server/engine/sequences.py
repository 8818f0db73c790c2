"""A sequence: one admitted request as the engine's worker thread advances it, and every change of its state."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from .contexts import Context
from .drafting import Drafter
from .generation import Generation
from .sampling import SamplerChain
from .stops import TextAssembler
from .types import GenerationRequest


class Phase(enum.Enum):
    """Where a sequence is in its life (llama.cpp's server calls this a slot's state)."""

    WAITING = "waiting"  # admitted, no slot yet
    PREFILLING = "prefilling"  # its prompt is evaluated a chunk per step
    GENERATING = "generating"  # one token (and its drafts) per step
    FINISHED = "finished"  # its slot, drafter and sampler given back


@dataclass(eq=False)
class Sequence:
    """One admitted request: its slot, the tokens in its KV (`evaluated`) and those it evaluates next (`todo`).

    Only its own methods change it: `place` and `start`, `decoded` after each decode, `sample`,
    then `accept` (a verified draft), `feed` and `reject_drafts`, and `finish` (or `discard`, never placed).
    """

    gen: Generation
    prompt: list[int]
    max_new: int
    sampler: SamplerChain
    assembler: TextAssembler
    drafter: Drafter | None = None  # speculation on: proposes `draft` before each decode
    phase: Phase = Phase.WAITING
    context: Context | None = None
    seq_id: int = -1
    n_cached: int = 0  # prompt tokens whose KV was reused from an earlier request
    todo: list[int] = field(default_factory=list)
    evaluated: list[int] = field(default_factory=list)  # every token now in this sequence's KV
    n_generated: int = 0
    draft: list[int] = field(default_factory=list)  # evaluated after `todo` this step, verified when sampled
    media: Any = None  # a prompt with images: its PromptMedia; engine/vision.py evaluates its images' placeholders

    @property
    def request(self) -> GenerationRequest:
        return self.gen.request

    @property
    def n_past(self) -> int:
        """The KV cells this sequence fills: the position of its next token."""
        return len(self.evaluated)

    def place(self, context: Context, slot: int) -> None:
        """The sequence holds `slot` of `context` from here on (`finish` gives it back)."""
        self.context, self.seq_id = context, slot

    def start(self, keep: int) -> None:
        """Start after the first `keep` prompt tokens, whose KV the slot already holds."""
        self.n_cached = keep
        self.evaluated = self.prompt[:keep]
        self.todo = self.prompt[keep:]
        self.phase = Phase.PREFILLING if len(self.todo) > 1 else Phase.GENERATING

    def decoded(self, n: int) -> None:
        """A decode computed the KV of the first `n` tokens of `todo`; drafts beyond it join only once verified."""
        self.evaluated.extend(self.todo[:n])
        del self.todo[:n]
        if len(self.todo) <= 1:
            self.phase = Phase.GENERATING

    def sample(self, ctx: Any, row: int) -> int:
        """The next token, sampled from row `row` of `ctx`'s logits; it counts as generated even when it ends the
        sequence."""
        token = self.sampler.sample(ctx, row)
        self.n_generated += 1
        return token

    def set_draft(self, tokens: list[int]) -> None:
        self.draft = tokens

    def take_draft(self) -> list[int]:
        """This step's drafts, now being verified."""
        drafts, self.draft = self.draft, []
        return drafts

    def accept(self, token: int) -> None:
        """A draft sampled as drafted: its KV, computed in this decode, stays."""
        self.evaluated.append(token)

    def feed(self, token: int) -> None:
        """`token` was sampled: the next step evaluates it."""
        self.todo = [token]

    def reject_drafts(self) -> None:
        """Drafts past `evaluated` were rejected: their KV must not be attended to."""
        assert self.context is not None, "only started sequences are sampled"
        llama_cpp.llama_memory_seq_rm(self.context.memory, self.seq_id, self.n_past, -1)

    def discard(self) -> None:
        """Dropped before it was placed (the engine stopped while it waited): only its sampler to close."""
        self.sampler.close()
        self.phase = Phase.FINISHED

    def finish(self, keep_cache: bool) -> None:
        """Give back the slot (if `place` got that far), the drafter's hold and the sampler; the slot's KV stays as
        a cache when `keep_cache`."""
        context = self.context
        if context is not None and self.seq_id >= 0:
            if keep_cache and self.evaluated:
                context.slot_cache[self.seq_id] = (self.request.adapters.key, self.evaluated)
            else:
                llama_cpp.llama_memory_seq_rm(context.memory, self.seq_id, -1, -1)
                context.slot_cache.pop(self.seq_id, None)
            context.leave(self.request.adapters.key)
            context.free_ids.append(self.seq_id)
        if self.drafter is not None:
            self.drafter.release(keep_cache)
        self.sampler.close()
        self.phase = Phase.FINISHED
