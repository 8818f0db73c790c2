"""An engine's admission: a request checked against its model's limits, tokenized off the event loop, counted in flight."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from .errors import Busy, PromptTooLong
from .in_flight import InFlight
from .model import LoadedModel
from .sampling import SamplerChain
from .types import GenerationRequest, RenderedPrompt

T = TypeVar("T")


class Admission:
    """The event loop's side of one engine, up to a sequence ready for the worker's inbox.

    `in_flight` counts a request from admission until its generation retires, tokenizing
    included, so capacity and a reload's idle wait both see it. `admitting` holds the requests
    being tokenized, under the worker's lock: the adapters they resolved are not freed under them.
    """

    def __init__(self, model: LoadedModel, lock: threading.Condition, *, capacity: int,
                 max_prompt_tokens: int | None) -> None:
        self.model = model
        self.capacity = capacity
        self.max_prompt_tokens = max_prompt_tokens
        self.in_flight = InFlight()
        self.admitting: dict[int, GenerationRequest] = {}
        self._lock = lock
        self._tokenizer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tok-{model.spec.name}")

    def check_capacity(self) -> None:
        count = self.in_flight.count
        if count >= self.capacity:
            raise Busy(
                f"model {self.model.spec.name!r} is at capacity ({count} requests "
                "running or queued); retry shortly",
                retry_after=max(1, count // max(1, self.model.spec.parallel)),
            )

    async def prepare(self, request: GenerationRequest) -> tuple[RenderedPrompt, SamplerChain]:
        """Count `request` in flight and hand back its prompt and sampler; on any failure it is counted out again.

        The caller moves it from `admitting` into the worker's inbox (or drops it) under the lock.
        """
        self.in_flight.count += 1
        with self._lock:
            self.admitting[id(request)] = request
        try:
            rendered, sampler = await asyncio.get_running_loop().run_in_executor(self._tokenizer, self._prepare, request)
            try:
                self._check_prompt_length(len(rendered.tokens))
            except BaseException:
                sampler.close()
                raise
        except BaseException:
            self.in_flight.count -= 1
            with self._lock:
                del self.admitting[id(request)]
                self._lock.notify()  # an adapter it held may be free now
            raise
        return rendered, sampler

    async def vocabulary(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the tokenizer pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer, partial(fn, *args))

    def close(self) -> None:
        self._tokenizer.shutdown(wait=False, cancel_futures=True)

    def _prepare(self, request: GenerationRequest) -> tuple[RenderedPrompt, SamplerChain]:
        """Tokenize and build the sampler chain (grammars are parsed here), off the event loop."""
        rendered = self.model.render(request.prompt)
        return rendered, SamplerChain(request.sampling, self.model.n_vocab, self.model.vocab)

    def _check_prompt_length(self, n_prompt: int) -> None:
        if self.max_prompt_tokens and n_prompt > self.max_prompt_tokens:
            raise PromptTooLong(
                f"The prompt has {n_prompt} tokens; this server accepts at most {self.max_prompt_tokens} "
                "prompt tokens per request (max_prompt_tokens).",
                )
