"""What the engine hands back: a Generation (async stream of TokenEvents), the open ones as a set, and running stats."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

from .types import GenerationRequest, TokenEvent


@dataclass
class EngineStats:
    """Running totals the metrics layer reads at scrape time (plain ints: no locking needed)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    prefix_copies: int = 0  # prompt prefixes copied from another sequence slot (llama_memory_seq_cp)
    decode_calls: int = 0
    decoded_tokens: int = 0
    adapter_switches: int = 0
    steps: int = 0
    last_batch_sequences: int = 0  # sequences the last step advanced, over all its llama_decode calls
    last_batch_tokens: int = 0  # tokens the last step evaluated (generated ones and prompt chunks)
    contexts: int = 1  # llama.cpp contexts open (one per concurrently running adapter set, bounded)
    drafted_tokens: int = 0  # speculative drafts evaluated
    accepted_tokens: int = 0  # drafts the sequence's sampler then picked: tokens gained without a step of their own
    # The prompt cache (engine/prompt_cache.py): states restored and not found, saved, and the seconds spent.
    prompt_cache_hits: int = 0
    prompt_cache_misses: int = 0
    prompt_cache_saves: int = 0
    prompt_cache_restored_tokens: int = 0
    prompt_cache_save_seconds: float = 0.0
    prompt_cache_restore_seconds: float = 0.0


@dataclass(frozen=True)
class Occupancy:
    """What one engine runs and queues right now, as load-aware routers read it (server/gateway_metrics.py)."""

    running: int  # sequences being evaluated
    waiting: int  # admitted requests without a sequence slot yet (being tokenized or queued)
    kv_used: int  # KV cells the running sequences hold, their reused prefixes included
    kv_cells: int  # KV cells of every sequence slot together (n_ctx × parallel)
    running_adapters: frozenset[str]  # adapter names of the running sequences
    waiting_adapters: frozenset[str]
    max_adapter_sets: int  # adapter sets that run at once, each in its own context, without switching


def adapter_names(requests: Iterable[GenerationRequest]) -> frozenset[str]:
    return frozenset(a.name for request in requests for a in request.adapters.adapters)


class Generation:
    """The caller's side of one submitted request: an async iterator of TokenEvents.

    Exactly one final event (finish reason or error) ends it; `cancel()` stops generation
    at the engine's next step.
    """

    def __init__(self, request: GenerationRequest, n_prompt: int, *, wake: Callable[[], None],
                 on_done: Callable[[Generation], None], prompt_text: str = "") -> None:
        self.request = request
        self.n_prompt = n_prompt
        # What the chat template rendered ("" for other prompts): it may already open a thinking block.
        self.prompt_text = prompt_text
        self.cancelled = False
        self.done = False
        self._wake = wake
        self._on_done = on_done
        self._events: asyncio.Queue[TokenEvent] = asyncio.Queue()

    def cancel(self) -> None:
        if not self.done and not self.cancelled:
            self.cancelled = True
            self._wake()

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self

    async def __anext__(self) -> TokenEvent:
        if self.done and self._events.empty():
            raise StopAsyncIteration
        event = await self._events.get()
        return event

    def _push(self, event: TokenEvent) -> None:
        """Runs on the event loop thread."""
        if self.done:
            return
        self._events.put_nowait(event)
        if event.final:
            self.done = True
            self._on_done(self)


def deliver(events: list[tuple[Generation, TokenEvent]]) -> None:
    for gen, event in events:
        gen._push(event)


class OpenGenerations:
    """The generations submitted and not yet finished: kept on the event loop, ended from any thread."""

    def __init__(self) -> None:
        self._open: set[Generation] = set()

    def add(self, gen: Generation) -> None:
        self._open.add(gen)

    def discard(self, gen: Generation) -> None:
        self._open.discard(gen)

    def end_all(self, loop: asyncio.AbstractEventLoop | None, error: Exception) -> None:
        """Make `error` the final event of every open generation, now when called on `loop`, else at its next turn.

        Events the engine sends them later are dropped (a generation takes one final event).
        """
        if loop is None or loop.is_closed():
            return  # nothing was submitted on a loop, so nothing is open
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._end_now(error)
        else:
            loop.call_soon_threadsafe(self._end_now, error)

    def _end_now(self, error: Exception) -> None:
        deliver([(gen, TokenEvent(error=error)) for gen in list(self._open)])
