"""The engine: one worker thread per model advancing every active sequence in shared llama_decode steps."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import llama_cpp

from .adapters import LoraAdapter, Unloads, free_lora, load_lora
from .admission import Admission
from .batching import PrefillPacer, Work, fill_batch, plan_step
from .contexts import Context, choose_context
from .errors import AdapterUnloaded, EngineError, ShuttingDown
from .generation import EngineStats, Generation, Occupancy, OpenGenerations, adapter_names, deliver
from .grammar_guard import GrammarTooCostly
from .model import LoadedModel
from .placement import PrefixReuse, place
from .prompt_cache import PromptCache
from .reranker import pools_by_rank
from .sampling import log_softmax_row, token_event
from .sampling_defaults import gguf_sampling
from .sequences import Phase, Sequence
from .slot_states import SlotStates
from .speculative import drafter_for, propose_drafts, verify
from .stops import TextAssembler
from .types import AdapterKey, GenerationRequest, ModelInfo, Prompt, TokenEvent, Usage
from .worker import Job, Worker

log = logging.getLogger(__name__)
T = TypeVar("T")


class Engine:
    """Schedules every request for one loaded model on its llama.cpp contexts.

    The HTTP side sees `submit()` (an awaitable returning a Generation), `Generation.cancel()`
    and, when a shutdown's grace period is over, `abort()`. All llama.cpp context calls happen
    on the worker thread, and never while it holds `_cv`: the event loop takes that lock to
    submit and cancel, so it waits only for deque moves. Tokenizing runs in a small pool.
    """

    def __init__(self, model: LoadedModel, *, queue_size: int, prefix_cache: bool = True,
                 max_prompt_tokens: int | None = None, prompt_cache: PromptCache | None = None) -> None:
        self.model = model
        self.info = ModelInfo(model.spec.name, model.n_vocab, model.n_ctx, model.spec.parallel,
                              model.chat_template.supports_tools, model.spec.reasoning_format,
                              chat_format=model.chat_format, gguf_sampling=gguf_sampling(model.metadata),
                              kind="reranker" if pools_by_rank(model.metadata) else "chat")
        self.prefix_reuse = PrefixReuse.for_context(prefix_cache, model.n_ctx, model.n_swa)
        self.stats = EngineStats()
        self.parallel = model.spec.parallel
        self._states = SlotStates.for_model(prompt_cache, model, self.stats)
        self.prompt_cache = None if self._states is None else self._states.cache
        self._generations = OpenGenerations()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: collections.deque[Sequence] = collections.deque()
        self._active: list[Sequence] = []
        # Context 0 is the model's own; more open, up to max_contexts, when several adapter sets
        # run at once, so each keeps its set applied (a change re-reserves llama.cpp's graph).
        self.max_contexts = max(1, model.spec.adapter_contexts)
        self._contexts = [Context.open(0, model.ctx, self.parallel)]
        self._unloads = Unloads()
        self._batch = llama_cpp.llama_batch_init(model.n_batch, 0, 1)
        self._pacer = PrefillPacer()
        # Its thread reads everything above; the admission below is first read once a request arrives.
        self._worker = Worker(f"engine-{model.spec.name}", self._turn, has_work=self._has_work,
                              on_stop=self._stopped)
        self._cv = self._worker.cv
        self._admission = Admission(model, self._cv, capacity=self.parallel + queue_size,
                                    max_prompt_tokens=max_prompt_tokens)

    # --- event loop side ---------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self._admission.capacity

    @property
    def waiting(self) -> int:
        return len(self._inbox)

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def outstanding(self) -> int:
        """Requests admitted and not yet finished, those still being tokenized included."""
        return self._admission.in_flight.count

    async def wait_idle(self) -> None:
        """Return once no request is outstanding (at once when none is), woken where the last one retires."""
        await self._admission.in_flight.wait_idle()

    def occupancy(self) -> Occupancy:
        """Running and waiting requests and the KV they hold, read on the event loop without the lock:
        copies of what the worker changes, so at most one step old (for gateway metrics)."""
        active = list(self._active)
        waiting = [*self._admission.admitting.values(), *(seq.request for seq in list(self._inbox))]
        return Occupancy(len(active), len(waiting), sum(seq.n_past for seq in active), self.model.n_ctx * self.parallel,
                         adapter_names(seq.request for seq in active), adapter_names(waiting), self.max_contexts)

    async def submit(self, request: GenerationRequest) -> Generation:
        """Admit a request or raise: 400 for a bad prompt, 429 when the queue is full.

        An adapter the request resolved holds from here on: one unloaded (or replaced) while the
        request is tokenized serves it to its end, as it does a request already running.
        """
        if self._worker.stopping:
            raise ShuttingDown()
        self._admission.check_capacity()
        speculation = self.model.spec.speculation_for(request.speculative)
        for applied in request.adapters.adapters:
            if applied.handle.unloading:
                raise AdapterUnloaded(applied.name)
        self._loop = asyncio.get_running_loop()
        rendered, sampler = await self._admission.prepare(request)
        prompt = rendered.tokens
        room = self.model.n_ctx - len(prompt)
        max_new = room if request.max_tokens is None else min(request.max_tokens, room)
        gen = Generation(request, len(prompt), wake=self._wake, on_done=self._retired, prompt_text=rendered.text)
        seq = Sequence(
            gen=gen,
            prompt=prompt,
            max_new=max_new,
            sampler=sampler,
            assembler=TextAssembler(request.stop),
            # Drafts are text: a prompt with images (placeholders, no vocabulary ids) is decoded without them.
            drafter=None if rendered.media else drafter_for(speculation, self.model.draft),
            media=rendered.media,
        )
        with self._cv:
            del self._admission.admitting[id(request)]
            if self._worker.stopping:  # closed while tokenizing: the worker would never see this sequence
                self._admission.in_flight.count -= 1
                seq.discard()
                raise ShuttingDown()
            self._inbox.append(seq)
            self._cv.notify()
        self._generations.add(gen)
        return gen

    async def count_tokens(self, prompt: Prompt) -> int:
        """The tokens `prompt` takes, counted as `submit` would (chat template included), off the event loop."""
        return len((await self.vocabulary(self.model.render, prompt)).tokens)

    def call(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run `fn` on the engine thread between two steps; await it with asyncio.wrap_future."""
        return self._worker.call(fn)

    def load_adapter(self, name: str, source: Any, gguf_path: Any, content_hash: str) -> concurrent.futures.Future[LoraAdapter]:
        """Load an adapter file on this model (on the engine thread)."""

        return self.call(partial(load_lora, self.model.model, self.model.spec.name, name, source, gguf_path,
                                 content_hash))

    def unload_adapter(self, adapter: LoraAdapter) -> None:
        """Stop admitting requests for `adapter`; it is freed once no sequence uses it."""
        adapter.unloading = True
        with self._cv:
            self._unloads.marked.append(adapter)
            self._cv.notify()

    async def vocabulary(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the tokenizer pool: tokenizing, detokenizing and template rendering read only
        the vocabulary and never need a generation slot, but a megabyte of text must not stall the loop."""
        if self._worker.stopping:
            raise ShuttingDown()
        return await self._admission.vocabulary(fn, *args)

    async def read_vocabulary(self, fn: Callable[[LoadedModel], T]) -> T:
        """`fn` over this model's vocabulary and chat template, in the tokenizer pool: the engine face's way
        (engine/face.py) for handlers to read them without holding the llama.cpp model themselves."""
        return await self.vocabulary(fn, self.model)

    def _retired(self, gen: Generation) -> None:
        self._admission.in_flight.count -= 1
        self._generations.discard(gen)

    def _wake(self) -> None:
        self._worker.wake()

    def abort(self, reason: str) -> None:
        """End every running and queued generation now with `ShuttingDown(reason)`; admit nothing after.

        For when a shutdown's grace period is over: each stream gets its final event at once, even
        while the worker is inside a long llama.cpp call; the worker drops what it still holds at
        its next turn, and `close()` still frees the model. Safe from any thread.
        """
        with self._cv:
            self._worker.stop()
            queued = list(self._inbox)
            self._inbox.clear()
        for seq in queued:
            seq.discard()
        self._generations.end_all(self._loop, ShuttingDown(reason))

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker and free the model; a worker still inside one llama.cpp call after `timeout`
        seconds is left to it (a daemon thread: it does not keep the process alive), with the model."""
        stopped = self._worker.close(timeout)
        self._admission.close()
        if not stopped:
            log.error("model %s: its engine thread is still inside a llama.cpp call after %gs; "
                      "leaving it and the model allocated", self.model.spec.name, timeout)
            return
        llama_cpp.llama_batch_free(self._batch)
        self.model.close()
        if self.prompt_cache is not None:
            self.prompt_cache.drain()  # to the disk tier, when there is one: the RAM goes with the model

    # --- worker thread -----------------------------------------------------------

    def _has_work(self) -> bool:
        """(Lock held.) An adapter still used by a request being tokenized is not work: the worker would spin on
        it; the admission that lets it go notifies the condition."""
        return bool(self._inbox or self._active) or self._unloads.any_unused(self._requests)

    def _turn(self, jobs: list[Job]) -> None:
        # Under the lock only moves between the deques; every llama.cpp call follows it.
        with self._cv:
            unused = self._unloads.take_unused(self._requests)
            starting = [self._inbox.popleft() for _ in range(min(len(self._inbox), self.parallel - len(self._active)))]
        for adapter in unused:
            free_lora(adapter, self._contexts, self.model.spec.name)
        if self._states is not None and starting:
            self._states.begin_turn()
        for seq in starting:
            try:
                self._start(seq)
            except Exception as exc:  # a sequence that cannot start fails alone; the worker lives on
                log.exception("could not start a sequence")
                self._abandon(seq, exc)
        for job in jobs:
            job()
        if not self._active:
            return
        try:
            self._step()
        except Exception as exc:  # never let the worker die: fail what was running, keep serving
            log.exception("engine step failed")
            self._fail_all(EngineError(f"generation failed: {exc}"))

    def _stopped(self) -> None:
        """On the worker once it stops: what runs and what waits ends with ShuttingDown (adapter loads still
        queued run after this, rather than hang their callers)."""
        self._fail_all(ShuttingDown())
        with self._cv:
            queued = list(self._inbox)
            self._inbox.clear()
        for seq in queued:
            seq.discard()
        self._emit([(seq.gen, TokenEvent(error=ShuttingDown())) for seq in queued])

    def _start(self, seq: Sequence) -> None:
        """Give a waiting sequence a context and a slot in it (placement.place), and make it active."""
        place(seq, self._context_for(seq.request.adapters.key), self._active, self.prefix_reuse, self.stats,
              self._states)
        self._active.append(seq)

    def _context_for(self, key: AdapterKey) -> Context:
        context = choose_context(self._contexts, key, can_open=len(self._contexts) < self.max_contexts)
        if context is not None:
            return context
        ptr = self.model.new_context()
        if not ptr:  # out of memory for another context: share the least busy one instead
            log.warning("could not create another context for %s; adapter sets will share", self.model.spec.name)
            self.max_contexts = len(self._contexts)
            return self._context_for(key)
        context = Context.open(len(self._contexts), ptr, self.parallel)
        self._contexts.append(context)
        self.stats.contexts = len(self._contexts)
        log.info("opened context %d of %s for a concurrent adapter set", context.index, self.model.spec.name)
        return context

    def _step(self) -> None:
        events: list[tuple[Generation, TokenEvent]] = []
        for seq in [s for s in self._active if s.gen.cancelled]:
            self._finish(seq, "cancelled", "", events)
        # The draft model's decodes count in the step's time, so prefill pacing leaves room for them.
        started = time.perf_counter()
        if self.model.vision is not None:
            for seq, problem in self.model.vision.evaluate_due(self._active, self.model.n_batch):
                self._finish(seq, None, "", events, error=EngineError(problem))
        chunk = self._pacer.chunk()
        propose_drafts(self._active, self.model.n_batch, self.model.n_ctx, chunk)
        calls = plan_step(self._active, self.model.n_batch, self._contexts, chunk)
        self.stats.steps += 1
        self.stats.last_batch_tokens = sum(len(tokens) for _, work in calls for _, tokens in work)
        self.stats.last_batch_sequences = sum(len(work) for _, work in calls)
        prompt_tokens = sum(len(tokens) for _, work in calls for seq, tokens in work if seq.phase is Phase.PREFILLING)
        for context, work in calls:
            self._decode_group(context, work, events)
        self._pacer.record(prompt_tokens, time.perf_counter() - started)
        self._emit(events)

    def _decode_group(self, context: Context, items: Work, events: list[tuple[Generation, TokenEvent]]) -> None:
        if context.apply(items[0][0].request.adapters):
            self.stats.adapter_switches += 1
        outputs = fill_batch(self._batch, items)
        rc = llama_cpp.llama_decode(context.ptr, self._batch)
        context.decoded = True
        if rc != 0:
            error = EngineError(f"llama_decode failed (code {rc})")
            for seq, _ in items:
                self._finish(seq, None, "", events, error=error)
            return
        self.stats.decode_calls += 1
        self.stats.decoded_tokens += self._batch.n_tokens
        for seq, tokens in items:
            seq.decoded(len(tokens))
        for seq, row in outputs:
            verify(seq, row, partial(self._sample, seq, events=events), self.stats)

    def _sample(self, seq: Sequence, index: int, *, events: list[tuple[Generation, TokenEvent]]) -> int | None:
        """Sample batch row `index` and emit the token; returns it, or None when that ended the sequence."""
        request, context = seq.request, seq.context
        assert context is not None, "only started sequences are sampled"
        logprobs = None
        if request.logprobs:
            logprobs = log_softmax_row(context.ptr, index, self.model.n_vocab)
        try:
            token = seq.sample(context.ptr, index)
        except GrammarTooCostly as exc:  # this sequence's grammar alone is at fault: the others go on
            self._finish(seq, None, "", events, error=exc)
            return None
        if self.model.is_eog(token):
            self._finish(seq, "stop", seq.assembler.flush(), events)
            return None
        piece = self.model.piece(token)
        text = seq.assembler.feed(piece)
        event = token_event(token, piece, text, logprobs, request.top_logprobs, self.model.piece)
        if seq.n_generated == 1:
            event = dataclasses.replace(event, cached_tokens=seq.n_cached)
        if seq.assembler.stopped:
            self._finish(seq, "stop", text, events, stop=seq.assembler.matched)
        elif seq.n_generated >= seq.max_new:
            self._finish(seq, "length", text + seq.assembler.flush(), events, last=event)
        else:
            events.append((seq.gen, event))
            return token
        return None

    def _finish(self, seq: Sequence, reason: str | None, text: str, events: list[tuple[Generation, TokenEvent]],
                *, error: Exception | None = None, last: TokenEvent | None = None, stop: str | None = None) -> None:
        usage = Usage(prompt_tokens=len(seq.prompt), completion_tokens=seq.n_generated, cached_tokens=seq.n_cached)
        if last is not None:  # the final event carries the last token too
            final = dataclasses.replace(last, text=text, finish_reason=reason, usage=usage)
        else:
            final = TokenEvent(text=text, finish_reason=reason, usage=usage, error=error, stop_sequence=stop)
        events.append((seq.gen, final))
        self._release(seq, keep_cache=error is None)

    def _release(self, seq: Sequence, keep_cache: bool) -> None:
        self._active.remove(seq)
        if self._states is not None:
            self._states.finished(seq)
        seq.finish(keep_cache=keep_cache and self.prefix_reuse.enabled)

    def _abandon(self, seq: Sequence, exc: Exception) -> None:
        """Undo a half-done `_start` and end the sequence's generation with an error."""
        if seq in self._active:
            self._active.remove(seq)
        seq.finish(keep_cache=False)
        self._emit([(seq.gen, TokenEvent(error=EngineError(f"generation failed: {exc}")))])

    def _fail_all(self, error: Exception) -> None:
        events: list[tuple[Generation, TokenEvent]] = []
        for seq in list(self._active):
            self._finish(seq, None, "", events, error=error)
        self._emit(events)

    def _requests(self) -> list[GenerationRequest]:
        """Every admitted request: running, waiting, or being tokenized (lock held)."""
        return [*(s.request for s in (*self._active, *self._inbox)), *self._admission.admitting.values()]

    def _emit(self, events: list[tuple[Generation, TokenEvent]]) -> None:
        if events and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(deliver, events)
