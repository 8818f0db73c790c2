"""A draft model for speculative decoding: a small model with the target's vocabulary, checked at load, and its
own context with a slot per running sequence, drafting greedily for every drafting sequence in shared decodes.

The draft runs without adapters: it only proposes, and the target verifies every draft under the
sequence's own adapter set (engine/speculative.py's `verify`), so an adapter changes what is
accepted, never what is emitted. Its KV follows each sequence's history lazily: before drafting,
what the target rejected is removed (llama_memory_seq_rm) and what the draft has not seen is fed.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from .contexts import common_prefix
from .drafting import Drafter, DraftRound, DraftView
from .errors import ModelFileError

log = logging.getLogger(__name__)

# As llama.cpp's common_speculative_are_compatible: vocabularies may differ by a few added tokens at
# the end, and the first few ids (control tokens, often renamed) are not compared.
VOCAB_MAX_SIZE_DIFFERENCE = 128
VOCAB_CHECK_START_TOKEN_ID = 5


def vocab_mismatch(target: Any, draft: Any) -> str | None:
    """Why the `draft` vocabulary (a llama_vocab) cannot propose tokens for `target`'s, or None."""
    get = llama_cpp
    if get.llama_vocab_type(target) != get.llama_vocab_type(draft):
        return f"the tokenizer types differ ({get.llama_vocab_type(draft)} vs {get.llama_vocab_type(target)})"
    for what, add, token in (("BOS", get.llama_vocab_get_add_bos, get.llama_vocab_bos),
                             ("EOS", get.llama_vocab_get_add_eos, get.llama_vocab_eos)):
        if add(target) != add(draft) or (add(target) and token(target) != token(draft)):
            return f"the {what} tokens differ (draft {token(draft)}, target {token(target)})"
    n_target, n_draft = get.llama_vocab_n_tokens(target), get.llama_vocab_n_tokens(draft)
    if abs(n_target - n_draft) > VOCAB_MAX_SIZE_DIFFERENCE:
        return f"the vocabulary sizes differ ({n_draft} vs {n_target} tokens)"
    for i in range(VOCAB_CHECK_START_TOKEN_ID, min(n_target, n_draft)):
        t, d = get.llama_vocab_get_text(target, i), get.llama_vocab_get_text(draft, i)
        if t != d:
            return f"token {i} differs (draft {d!r}, target {t!r})"
    return None


@dataclass(kw_only=True, eq=False)
class ModelDrafter(Drafter):
    """A sequence's place in its draft model: the draft context's slot it holds, -1 for none yet.

    The draft model proposes for every drafting sequence at once, so this only queues the sequence there.
    """

    source: DraftModel
    slot: int = -1

    def propose(self, view: DraftView, limit: int, round_: DraftRound) -> None:
        self.source.queue(self, view, limit)
        round_.join(self.source)

    def release(self, keep_cache: bool) -> None:
        self.source.release(self, keep_cache)


@dataclass
class _Drafting:
    """One sequence in this step's draft: what it feeds the draft context, and how many drafts it may take."""

    view: DraftView
    drafter: ModelDrafter
    feed: list[int]
    limit: int  # drafts wanted; 0 while the draft context only catches up with the sequence's prompt
    drafts: list[int] = field(default_factory=list)
    row: int = -1  # the batch row of its logits


class DraftModel:
    """A draft model's weights and one context of `parallel` slots, used by the engine's worker thread alone.

    A slot's KV stays when its sequence ends (`cached`), so a later request with the same prompt
    prefix feeds the draft only the rest, whatever adapter set it runs under.
    """

    def __init__(self, path: Path, *, target_path: Path, target_vocab: Any, mparams: Any, cparams: Any) -> None:
        self.path = path
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise ModelFileError(f"draft model {path}: llama.cpp could not load this file as a GGUF model")
        self.ctx = None
        self._batch = None
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        problem = vocab_mismatch(target_vocab, self.vocab)
        if problem:
            self.close()
            raise ModelFileError(f"draft model {path} cannot draft for {target_path}: its vocabulary is not the "
                                 f"target's ({problem})")
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            self.close()
            raise ModelFileError(f"draft model {path}: llama.cpp could not create its context (see the log)")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_batch = cparams.n_batch
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        n_slots = llama_cpp.llama_n_seq_max(self.ctx)
        self.free: list[int] = list(range(n_slots))
        self.cached: list[list[int]] = [[] for _ in range(n_slots)]  # the tokens each slot's KV holds
        self._queued: list[tuple[ModelDrafter, DraftView, int]] = []  # this step's sequences, generating ones first
        log.info("draft model %s loaded for %s (%d slots)", path, target_path, n_slots)

    # --- drafting (the engine's worker thread) ------------------------------------

    def drafter(self, n_max: int) -> ModelDrafter:
        """A drafter for one sequence that drafts with this model."""
        return ModelDrafter(n_max=n_max, source=self)

    def queue(self, drafter: ModelDrafter, view: DraftView, limit: int) -> None:
        """Draft up to `limit` tokens for `view` at the next `run` (0: only feed the prompt it is prefilling)."""
        self._queued.append((drafter, view, limit))

    def run(self, budget: int) -> None:
        """Set the drafts of each queued generating sequence; feed the prompts of prefilling ones, whose tokens are
        known before the target evaluates them.

        At most `budget` tokens catch up in this step (generating sequences first): a sequence whose
        history does not fit drafts nothing now and catches up over the next steps, so a long prompt
        never stalls running streams. Then one decode per draft position, one token per sequence.
        """
        queued, self._queued = self._queued, []
        plan: list[_Drafting] = []
        for drafter, view, limit in queued:
            feed = self._sync(drafter, view.evaluated + view.todo, keep_last=limit > 0)
            take = min(len(feed), budget)
            if take:
                budget -= take
                plan.append(_Drafting(view, drafter, feed[:take], limit if take == len(feed) else 0))
        if not plan:
            return
        plan.sort(key=lambda d: d.drafter.slot)  # consecutive sequence ids share a ubatch (docs/architecture.md)
        if self._decode([(d, d.feed) for d in plan]):
            self._draft([d for d in plan if d.limit])
        for d in plan:
            if d.drafts:
                d.view.set_draft(d.drafts)

    def _draft(self, drafting: list[_Drafting]) -> None:
        """Draft greedily, one token per sequence and decode, until each has its `limit`."""
        while drafting:
            for d in drafting:
                token = self._greedy(d.row)
                d.drafts.append(token)
                if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                    d.limit = len(d.drafts)  # nothing follows an end of generation
            # The last draft is never fed: the target verifies it, and the next step feeds what it accepted.
            drafting = [d for d in drafting if len(d.drafts) < d.limit]
            if drafting and not self._decode([(d, d.drafts[-1:]) for d in drafting]):
                return

    def _sync(self, drafter: ModelDrafter, history: list[int], keep_last: bool) -> list[int]:
        """Give the sequence a slot if it has none, trim the slot's KV to what `history` shares, and return the
        tokens of `history` it has not seen (its last token always, when `keep_last`: its logits start the draft)."""
        if drafter.slot < 0:
            drafter.slot = max(sorted(self.free), key=lambda slot: common_prefix(self.cached[slot], history))
            self.free.remove(drafter.slot)
        cached = self.cached[drafter.slot]
        keep = common_prefix(cached, history)
        if keep_last:
            keep = min(keep, len(history) - 1)
        if keep < len(cached):
            llama_cpp.llama_memory_seq_rm(self.memory, drafter.slot, keep, -1)
            del cached[keep:]
        return history[keep:]

    def _decode(self, work: list[tuple[_Drafting, list[int]]]) -> bool:
        """Feed each sequence's tokens at the end of its slot's KV, logits after the last of those still drafting.

        False when llama.cpp fails: those slots are emptied and no sequence drafts this step (the draft
        only speeds generation up, so a failure costs speed, never output).
        """
        batch, n = self._batch, 0
        assert batch is not None
        for d, tokens in work:
            slot, cached = d.drafter.slot, self.cached[d.drafter.slot]
            for j, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = len(cached) + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot
                batch.logits[n] = bool(d.limit) and j == len(tokens) - 1
                if batch.logits[n]:
                    d.row = n
                n += 1
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(self.ctx, batch)
        if rc != 0:
            log.warning("draft model %s: llama_decode failed (code %d); no drafts this step", self.path, rc)
            for d, _ in work:
                llama_cpp.llama_memory_seq_rm(self.memory, d.drafter.slot, -1, -1)
                self.cached[d.drafter.slot].clear()
                d.drafts.clear()
            return False
        for d, tokens in work:
            self.cached[d.drafter.slot].extend(tokens)
        return True

    def _greedy(self, row: int) -> int:
        logits = llama_cpp.llama_get_logits_ith(self.ctx, row)
        return int(np.ctypeslib.as_array(ctypes.cast(logits, ctypes.POINTER(ctypes.c_float)),
                                         shape=(self.n_vocab,)).argmax())

    def release(self, drafter: ModelDrafter, keep_cache: bool) -> None:
        """The sequence ended: its slot is free again, its KV kept for a later prompt when `keep_cache`."""
        if self._queued:  # ended between queueing and a run (a failed step): never drafted for
            self._queued = [queued for queued in self._queued if queued[0] is not drafter]
        if drafter.slot < 0:
            return
        if not keep_cache:
            llama_cpp.llama_memory_seq_rm(self.memory, drafter.slot, -1, -1)
            self.cached[drafter.slot].clear()
        self.free.append(drafter.slot)
        drafter.slot = -1

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None
