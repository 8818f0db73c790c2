"""The engine: one worker thread per model advancing every active sequence in shared llama_decode steps."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import llama_cpp

from .errors import AdapterRejected, AdapterUnloaded, Busy, EngineError, PromptTooLong, ShuttingDown
from .adapters import LoraAdapter
from .generation import EngineStats, Generation, deliver
from .contexts import Lane, choose_lane, common_prefix
from .model import LoadedModel
from .sampling import SamplerChain, log_softmax_row, top_logprobs
from .stops import TextAssembler
from .types import ChatPrompt, GenerationRequest, TokenEvent, Usage

log = logging.getLogger("nomoat.engine")
T = TypeVar("T")

# While other sequences are streaming, a prompt is evaluated this many tokens per step, so a
# long prompt delays each running stream by one short step instead of its whole prefill.
PREFILL_CHUNK_WHILE_DECODING = 128
# Prompt tokens whose prefill costs as much as copying a 4096-cell KV stream between sequences
# (bench/bench_prefix_copy.py); the copy cost scales with the cells per sequence.
COPY_BREAK_EVEN_TOKENS_PER_4K = 16


@dataclass(eq=False)
class _Sequence:
    gen: Generation
    prompt: list[int]
    max_new: int
    sampler: SamplerChain
    assembler: TextAssembler
    lane: Lane | None = None
    seq_id: int = -1
    n_past: int = 0
    n_cached: int = 0  # prompt tokens whose KV was reused from an earlier request
    todo: list[int] = field(default_factory=list)
    evaluated: list[int] = field(default_factory=list)  # every token now in this sequence's KV
    n_generated: int = 0

    @property
    def request(self) -> GenerationRequest:
        return self.gen.request


class Engine:
    """Schedules every request for one loaded model on its llama.cpp contexts (lanes).

    The HTTP side sees `submit()` (an awaitable returning a Generation) and `Generation.cancel()`.
    All llama.cpp context calls happen on the worker thread; tokenizing runs in a small pool.
    """

    def __init__(self, model: LoadedModel, *, queue_size: int, prefix_cache: bool = True,
                 max_prompt_tokens: int | None = None) -> None:
        self.model = model
        self.prefix_cache = prefix_cache
        # A copy moves a whole KV stream, n_ctx cells: worth it past this many tokens saved.
        self.copy_min_tokens = max(1, round(COPY_BREAK_EVEN_TOKENS_PER_4K * model.n_ctx / 4096))
        self.max_prompt_tokens = max_prompt_tokens
        self.stats = EngineStats()
        self.parallel = model.spec.parallel
        self.capacity = self.parallel + queue_size
        self._outstanding = 0  # admitted and not yet finished; touched on the event loop only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cv = threading.Condition()
        self._inbox: collections.deque[_Sequence] = collections.deque()
        self._active: list[_Sequence] = []
        # Lane 0 is the model's own context; more open, up to max_lanes, when several adapter sets
        # run at once, so each keeps its set applied (a change re-reserves llama.cpp's graph).
        self.max_lanes = max(1, model.spec.adapter_contexts)
        self._lanes = [Lane.open(0, model.ctx, self.parallel)]
        self._stopping = False
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._to_free: list[LoraAdapter] = []
        self._batch = llama_cpp.llama_batch_init(model.n_batch, 0, 1)
        self._tokenizer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tok-{model.spec.name}")
        self._thread = threading.Thread(target=self._run, name=f"engine-{model.spec.name}", daemon=True)
        self._thread.start()

    # --- event loop side ---------------------------------------------------------

    @property
    def waiting(self) -> int:
        return len(self._inbox)

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def outstanding(self) -> int:
        """Requests admitted and not yet finished, those still being tokenized included."""
        return self._outstanding

    async def submit(self, request: GenerationRequest) -> Generation:
        """Admit a request or raise: 400 for a bad prompt, 429 when the queue is full."""
        if self._stopping:
            raise ShuttingDown()
        self._check_capacity()
        loop = asyncio.get_running_loop()
        self._loop = loop
        # Counted from admission, so a reload that retires this engine waits for its tokenizing too.
        self._outstanding += 1
        try:
            prompt, sampler = await loop.run_in_executor(self._tokenizer, self._prepare, request)
        except BaseException:
            self._outstanding -= 1
            raise
        try:
            self._check_prompt_length(request, len(prompt))
            for applied in request.adapters.adapters:
                if applied.handle.unloading:
                    raise AdapterUnloaded(applied.name)
        except BaseException:
            sampler.close()
            self._outstanding -= 1
            raise
        room = self.model.n_ctx - len(prompt)
        max_new = room if request.max_tokens is None else min(request.max_tokens, room)
        gen = Generation(request, len(prompt), wake=self._wake, on_done=self._retired)
        seq = _Sequence(
            gen=gen,
            prompt=prompt,
            max_new=max_new,
            sampler=sampler,
            assembler=TextAssembler(request.stop),
            todo=list(prompt),
        )
        with self._cv:
            if self._stopping:  # closed while tokenizing: the worker would never see this sequence
                self._outstanding -= 1
                seq.sampler.close()
                raise ShuttingDown()
            self._inbox.append(seq)
            self._cv.notify()
        return gen

    def call(self, fn: Callable[[], T]) -> "concurrent.futures.Future[T]":
        """Run `fn` on the engine thread between two steps; await it with asyncio.wrap_future."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def job() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # handed to whoever waits on the future
                    future.set_exception(exc)

        with self._cv:
            if self._stopping:
                raise ShuttingDown()
            self._jobs.append(job)
            self._cv.notify()
        return future

    def load_adapter(self, name: str, source: Any, gguf_path: Any, content_hash: str) -> "concurrent.futures.Future[LoraAdapter]":
        """Load an adapter file on this model (on the engine thread)."""

        def init() -> LoraAdapter:
            ptr = llama_cpp.llama_adapter_lora_init(self.model.model, str(gguf_path).encode())
            if not ptr:
                raise AdapterRejected(f"{source}: llama.cpp refused the adapter for model "
                                   f"{self.model.spec.name!r} (see the log)", param="path")
            return LoraAdapter(name=name, source=source, gguf_path=gguf_path, content_hash=content_hash, ptr=ptr)

        return self.call(init)

    def unload_adapter(self, adapter: LoraAdapter) -> None:
        """Stop admitting requests for `adapter`; it is freed once no sequence uses it."""
        adapter.unloading = True
        with self._cv:
            self._to_free.append(adapter)
            self._cv.notify()

    def _prepare(self, request: GenerationRequest) -> tuple[list[int], SamplerChain]:
        """Tokenize and build the sampler chain (grammars are parsed here), off the event loop."""
        prompt = self.model.prompt_tokens(request.prompt)
        return prompt, SamplerChain(request.sampling, self.model.n_vocab, self.model.vocab)
    def _check_prompt_length(self, request: GenerationRequest, n_prompt: int) -> None:
        if self.max_prompt_tokens and n_prompt > self.max_prompt_tokens:
            raise PromptTooLong(
                f"The prompt has {n_prompt} tokens; this server accepts at most {self.max_prompt_tokens} "
                "prompt tokens per request (max_prompt_tokens).",
                )

    def _check_capacity(self) -> None:
        if self._outstanding >= self.capacity:
            raise Busy(
                f"model {self.model.spec.name!r} is at capacity ({self._outstanding} requests "
                "running or queued); retry shortly",
                retry_after=max(1, self._outstanding // max(1, self.parallel)),
            )

    def _retired(self) -> None:
        self._outstanding -= 1

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    def close(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout)
        self._tokenizer.shutdown(wait=False)
        if not self._thread.is_alive():
            llama_cpp.llama_batch_free(self._batch)
            self.model.close()

    # --- worker thread -----------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._stopping or self._inbox or self._active or self._jobs or self._to_free):
                    self._cv.wait()
                if self._stopping:
                    break
                jobs = list(self._jobs)
                self._jobs.clear()
                self._free_unused_adapters()
                while self._inbox and len(self._active) < self.parallel:
                    seq = self._inbox.popleft()
                    try:
                        self._start(seq)
                    except Exception as exc:  # a sequence that cannot start fails alone; the worker lives on
                        log.exception("could not start a sequence")
                        self._abandon(seq, exc)
            for job in jobs:
                job()
            if not self._active and not self._inbox:
                continue
            try:
                self._step()
            except Exception as exc:  # never let the worker die: fail what was running, keep serving
                log.exception("engine step failed")
                self._fail_all(EngineError(f"generation failed: {exc}"))
        self._fail_all(ShuttingDown())
        for job in self._jobs:
            job()  # adapter loads still waiting: let them finish rather than hang their callers
        for seq in list(self._inbox):
            self._emit([(seq.gen, TokenEvent(error=ShuttingDown()))])
        self._inbox.clear()

    def _start(self, seq: _Sequence) -> None:
        """Give a waiting sequence a lane and a slot, reusing the longest cached prefix of its prompt.

        A request takes the slot sharing its longest prefix under the same adapter set, as
        llama.cpp's server does, and evaluates only the rest.
        """
        key = seq.request.adapters.key
        lane = self._lane_for(key)
        best, best_len = lane.take_slot(key, seq.prompt)
        seq.lane, seq.seq_id = lane, best
        # At least the last prompt token is evaluated again: its logits start the generation.
        keep = min(best_len, len(seq.prompt) - 1) if self.prefix_cache else 0
        if self.prefix_cache:
            keep = self._copy_prefix(seq, keep)
        llama_cpp.llama_memory_seq_rm(lane.memory, best, keep, -1)
        seq.n_past = seq.n_cached = keep
        seq.evaluated = seq.prompt[:keep]
        seq.todo = seq.prompt[keep:]
        self.stats.prompt_tokens += len(seq.prompt)
        self.stats.cached_tokens += keep
        self._active.append(seq)

    def _copy_prefix(self, seq: _Sequence, keep: int) -> int:
        """Copy a longer prefix of the prompt from another slot of the lane, when that beats prefilling it.

        Another slot, idle or running, may hold more of this prompt under the same adapter set
        (eight clients sharing a system prompt, say). With a KV stream per sequence llama.cpp
        copies the source's whole stream (`llama_memory_seq_cp` must take all positions), a cost
        fixed by n_ctx; prefilling grows with the prompt. So a copy is made only when it saves at
        least `copy_min_tokens` (bench/bench_prefix_copy.py). Returns the tokens now reused.
        """
        key, lane = seq.request.adapters.key, seq.lane
        holders = [(slot, cached[1]) for slot, cached in lane.slot_cache.items() if cached[0] == key]
        holders += [(s.seq_id, s.evaluated) for s in self._active if s.lane is lane and s.request.adapters.key == key]
        best_src, best_len = None, keep
        for slot, tokens in holders:
            if slot == seq.seq_id:
                continue
            n = min(common_prefix(tokens, seq.prompt), len(seq.prompt) - 1)
            if n > best_len:
                best_src, best_len = slot, n
        if best_src is None or best_len - keep < self.copy_min_tokens:
            return keep
        # The whole stream comes over (its data at the next decode, before anything is computed);
        # the caller trims what follows the shared prefix.
        llama_cpp.llama_memory_seq_cp(lane.memory, best_src, seq.seq_id, -1, -1)
        self.stats.prefix_copies += 1
        return best_len

    def _lane_for(self, key: tuple) -> Lane:
        lane = choose_lane(self._lanes, key, can_open=len(self._lanes) < self.max_lanes)
        if lane is not None:
            return lane
        ctx = self.model.new_context()
        if not ctx:  # out of memory for another context: share the least busy one instead
            log.warning("could not create another context for %s; adapter sets will share", self.model.spec.name)
            self.max_lanes = len(self._lanes)
            return self._lane_for(key)
        lane = Lane.open(len(self._lanes), ctx, self.parallel)
        self._lanes.append(lane)
        self.stats.contexts = len(self._lanes)
        log.info("opened context %d of %s for a concurrent adapter set", lane.index, self.model.spec.name)
        return lane

    def _step(self) -> None:
        events: list[tuple[Generation, TokenEvent]] = []
        for seq in [s for s in self._active if s.gen.cancelled]:
            self._finish(seq, "cancelled", "", events)
        decoding = [s for s in self._active if len(s.todo) == 1]
        prefilling = [s for s in self._active if len(s.todo) > 1]
        budget = self.model.n_batch - len(decoding)
        chunk_cap = PREFILL_CHUNK_WHILE_DECODING if decoding else budget
        work: list[tuple[_Sequence, list[int]]] = [(s, s.todo) for s in decoding]
        for seq in prefilling:
            take = min(budget, chunk_cap, len(seq.todo))
            if take <= 0:
                break
            work.append((seq, seq.todo[:take]))
            budget -= take
        groups: dict[tuple[int, tuple], list[tuple[_Sequence, list[int]]]] = {}
        for item in work:
            groups.setdefault((item[0].lane.index, item[0].request.adapters.key), []).append(item)
        # Per lane, start with the set already applied: a switch re-reserves llama.cpp's graph.
        order = sorted(groups, key=lambda g: (g[0], g[1] != self._lanes[g[0]].applied))
        self.stats.steps += 1
        self.stats.last_batch_tokens = sum(len(tokens) for _, tokens in work)
        self.stats.last_batch_sequences = len(work)
        for group in order:
            # Increasing sequence ids: llama.cpp puts only consecutive ids in one ubatch, so an
            # unsorted batch of 8 ran as up to 4 ubatches (25 % slower, bench/bench_batch.py).
            items = sorted(groups[group], key=lambda item: item[0].seq_id)
            self._decode_group(self._lanes[group[0]], items, events)
        self._emit(events)

    def _decode_group(self, lane: Lane, items: list[tuple[_Sequence, list[int]]], events: list) -> None:
        if lane.apply(items[0][0].request.adapters):
            self.stats.adapter_switches += 1
        batch = self._batch
        n = 0
        outputs: list[tuple[_Sequence, int]] = []
        for seq, tokens in items:
            for j, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = seq.n_past + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq.seq_id
                last = j == len(tokens) - 1 and len(tokens) == len(seq.todo)
                batch.logits[n] = last
                if last:
                    outputs.append((seq, n))
                n += 1
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(lane.ctx, batch)
        lane.decoded = True
        if rc != 0:
            error = EngineError(f"llama_decode failed (code {rc})")
            for seq, _ in items:
                self._finish(seq, None, "", events, error=error)
            return
        self.stats.decode_calls += 1
        self.stats.decoded_tokens += n
        for seq, tokens in items:
            seq.n_past += len(tokens)
            seq.evaluated.extend(tokens)
            del seq.todo[: len(tokens)]
        for seq, index in outputs:
            self._sample(seq, index, events)

    def _sample(self, seq: _Sequence, index: int, events: list) -> None:
        request = seq.request
        logprobs = None
        if request.logprobs:
            logprobs = log_softmax_row(seq.lane.ctx, index, self.model.n_vocab)
        token = seq.sampler.sample(seq.lane.ctx, index)
        seq.n_generated += 1
        if self.model.is_eog(token):
            self._finish(seq, "stop", seq.assembler.flush(), events)
            return
        piece = self.model.piece(token)
        text = seq.assembler.feed(piece)
        event = TokenEvent(
            text=text,
            token_id=token,
            token_text=piece.decode("utf-8", "replace"),
            token_bytes=list(piece),
            logprob=float(logprobs[token]) if logprobs is not None else None,
            top_logprobs=(
                top_logprobs(logprobs, request.top_logprobs, self.model.piece) if logprobs is not None else None
            ),
        )
        if seq.assembler.stopped:
            self._finish(seq, "stop", text, events)
        elif seq.n_generated >= seq.max_new:
            self._finish(seq, "length", text + seq.assembler.flush(), events, last=event)
        else:
            events.append((seq.gen, event))
            seq.todo = [token]

    def _finish(self, seq: _Sequence, reason: str | None, text: str, events: list,
                *, error: Exception | None = None, last: TokenEvent | None = None) -> None:
        usage = Usage(prompt_tokens=len(seq.prompt), completion_tokens=seq.n_generated, cached_tokens=seq.n_cached)
        if last is not None:
            final = TokenEvent(
                text=text, token_id=last.token_id, token_text=last.token_text, token_bytes=last.token_bytes,
                logprob=last.logprob, top_logprobs=last.top_logprobs, finish_reason=reason, usage=usage,
            )
        else:
            final = TokenEvent(text=text, finish_reason=reason, usage=usage, error=error)
        events.append((seq.gen, final))
        self._release(seq, keep_cache=error is None)

    def _release(self, seq: _Sequence, keep_cache: bool) -> None:
        lane = seq.lane
        if keep_cache and self.prefix_cache and seq.evaluated:
            lane.slot_cache[seq.seq_id] = (seq.request.adapters.key, seq.evaluated)
        else:
            llama_cpp.llama_memory_seq_rm(lane.memory, seq.seq_id, -1, -1)
        seq.sampler.close()
        self._active.remove(seq)
        lane.leave(seq.request.adapters.key)
        lane.free_ids.append(seq.seq_id)

    def _abandon(self, seq: _Sequence, exc: Exception) -> None:
        """Undo a half-done `_start` and end the sequence's generation with an error."""
        if seq in self._active:
            self._active.remove(seq)
        lane = seq.lane
        if lane is not None and seq.seq_id >= 0:
            llama_cpp.llama_memory_seq_rm(lane.memory, seq.seq_id, -1, -1)
            lane.slot_cache.pop(seq.seq_id, None)
            lane.leave(seq.request.adapters.key)
            lane.free_ids.append(seq.seq_id)
        seq.sampler.close()
        self._emit([(seq.gen, TokenEvent(error=EngineError(f"generation failed: {exc}")))])

    def _fail_all(self, error: Exception) -> None:
        events: list[tuple[Generation, TokenEvent]] = []
        for seq in list(self._active):
            self._finish(seq, None, "", events, error=error)
        self._emit(events)

    def _free_unused_adapters(self) -> None:
        """Free adapters marked for unloading that no queued or running sequence uses (lock held)."""
        if not self._to_free:
            return
        in_use = {id(a.handle) for s in (*self._active, *self._inbox) for a in s.request.adapters.adapters}
        for adapter in [a for a in self._to_free if id(a) not in in_use]:
            for lane in self._lanes:
                lane.clear_if_using(adapter.content_hash)  # a context still pointing at it
            llama_cpp.llama_adapter_lora_free(adapter.ptr)
            adapter.ptr = None
            self._to_free.remove(adapter)
            log.info("freed adapter %s on %s", adapter.name, self.model.spec.name)

    def _emit(self, events: list[tuple[Generation, TokenEvent]]) -> None:
        if events and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(deliver, events)
