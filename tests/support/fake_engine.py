"""A stand-in for the engine: no llama.cpp, scripted output, the real Generation and event types.

The fake "model" answers every prompt with a script: by default the last user message (or the raw
prompt) read back, one character per token; a prompt starting with `SAY:` answers exactly the rest
(tool-call markup, JSON...). Tokens are character codes, so `piece()` and logprobs are exact.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from nomoat.engine.chat_template import CHATML, ChatTemplate
from nomoat.engine.embedder import Embeddings
from nomoat.engine.errors import Busy, InvalidInput, PromptTooLong, ShuttingDown
from nomoat.engine.face import Vocabulary
from nomoat.engine.generation import EngineStats, Generation, Occupancy, adapter_names
from nomoat.engine.in_flight import InFlight
from nomoat.engine.prompt_cache import PromptCache
from nomoat.engine.types import ChatPrompt, GenerationRequest, ModelInfo, TextPrompt, TokenEvent, TokenPrompt, TopLogprob, Usage
from nomoat.formats import GENERIC, ChatFormat

T = TypeVar("T")
N_VOCAB = 0x3000
N_CTX = 4096


def script_for(request: GenerationRequest) -> str:
    prompt = request.prompt
    if isinstance(prompt, ChatPrompt):
        users = [m for m in prompt.messages if m["role"] == "user"]
        text = str(users[-1]["content"]) if users else ""
    elif isinstance(prompt, TextPrompt):
        text = prompt.text
    else:
        text = "".join(chr(t) for t in prompt.tokens)
    return text[len("SAY:"):] if text.startswith("SAY:") else f"You said: {text}"


class FakeModel:
    """The fake's vocabulary (engine/face.py's Vocabulary) and chat template; a test may swap the template."""

    def __init__(self) -> None:
        self.n_ctx = N_CTX  # the registry reads a loaded model's context for /v1/models' max_model_len
        self.chat_template = ChatTemplate(CHATML, bos_token="", eos_token="<|im_end|>")

    def piece(self, token: int) -> bytes:
        return chr(token).encode("utf-8", "replace")

    def token_bytes(self, token: int, *, special: bool) -> bytes:
        return self.piece(token)

    def tokenize(self, text: str, *, add_bos: bool, special: bool = True) -> list[int]:
        return [ord(c) % N_VOCAB for c in text]

    def detokenize(self, tokens: list[int]) -> str:
        bad = next((t for t in tokens if not 0 <= t < N_VOCAB), None)
        if bad is not None:
            raise InvalidInput(f"token id {bad} is outside the vocabulary (0..{N_VOCAB - 1})", subject="tokens")
        return "".join(chr(t) for t in tokens)

    def chat_text(self, prompt: ChatPrompt) -> str:
        return self.chat_template.render(prompt.messages, tools=prompt.tools, variables=prompt.variables)

    def prompt_tokens(self, prompt: Any) -> list[int]:
        if isinstance(prompt, TokenPrompt):
            bad = next((t for t in prompt.tokens if not 0 <= t < N_VOCAB), None)
            if bad is not None:
                raise InvalidInput(f"token id {bad} is outside the vocabulary (0..{N_VOCAB - 1})")
            tokens = list(prompt.tokens)
        elif isinstance(prompt, ChatPrompt):
            tokens = self.tokenize(self.chat_text(prompt), add_bos=False)
        else:
            tokens = [ord(c) % N_VOCAB for c in prompt.text]
        if not tokens:
            raise InvalidInput("the prompt is empty")
        if len(tokens) >= N_CTX:
            raise PromptTooLong(f"This model's maximum context length is {N_CTX} tokens; the prompt has {len(tokens)}.")
        return tokens


@dataclass
class FakeEngine:
    """Generates its script on the event loop, one token per loop turn. `capacity` bounds admissions."""

    name: str
    capacity: int = 16
    model: FakeModel = field(default_factory=FakeModel)
    reasoning_format: str = "auto"  # as models.toml's reasoning_format
    gguf_sampling: dict[str, float | int] = field(default_factory=dict)  # as a GGUF's general.sampling.* keys
    stats: EngineStats = field(default_factory=EngineStats)
    in_flight: InFlight = field(default_factory=InFlight)
    aborted: str | None = None
    submitted: list[GenerationRequest] = field(default_factory=list)
    logprob: float = math.log(0.5)  # what every token's logprob is (NaN to mimic runaway adapter weights)
    # When set, every generation pauses after its first token until this is set, cancelled or aborted:
    # a test acts on a stream that is certainly still running.
    hold: threading.Event | None = None
    running: dict[int, GenerationRequest] = field(default_factory=dict)  # by id(Generation)
    cached_tokens: int = 0  # prompt tokens each generation reports as reused from the prefix cache
    prompt_cache: PromptCache | None = None  # the RAM tier of the prompt cache, as the engine's (None: off)
    chat_format: ChatFormat = GENERIC  # the family format a test gives the fake (server/formats/)

    @property
    def info(self) -> ModelInfo:
        # Read afresh, unlike the engine's: a test swaps the template or the reasoning format on a running fake.
        return ModelInfo(self.name, N_VOCAB, N_CTX, 4, self.model.chat_template.supports_tools, self.reasoning_format,
                         chat_format=self.chat_format, gguf_sampling=self.gguf_sampling)

    @property
    def outstanding(self) -> int:
        return self.in_flight.count

    @outstanding.setter
    def outstanding(self, value: int) -> None:
        self.in_flight.count = value

    async def wait_idle(self) -> None:
        await self.in_flight.wait_idle()

    @property
    def waiting(self) -> int:
        return 0

    @property
    def active(self) -> int:
        return self.outstanding

    async def submit(self, request: GenerationRequest) -> Generation:
        if self.aborted is not None:
            raise ShuttingDown()
        if self.outstanding >= self.capacity:
            raise Busy(f"model {self.name!r} is at capacity", retry_after=1)
        prompt = self.model.prompt_tokens(request.prompt)
        text = self.model.chat_text(request.prompt) if isinstance(request.prompt, ChatPrompt) else ""
        self.submitted.append(request)
        self.outstanding += 1
        gen = Generation(request, len(prompt), wake=lambda: None, on_done=self._retired, prompt_text=text)
        self.running[id(gen)] = request
        asyncio.get_running_loop().create_task(self._produce(gen, request, len(prompt)))
        return gen

    async def count_tokens(self, prompt: Any) -> int:
        return len(self.model.prompt_tokens(prompt))

    async def read_vocabulary(self, fn: Callable[[Vocabulary], T]) -> T:
        return fn(self.model)

    def occupancy(self) -> Occupancy:
        """Every admitted generation runs at once here; each holds one KV cell per prompt token."""
        requests = list(self.running.values())
        return Occupancy(len(requests), 0, sum(len(self.model.prompt_tokens(r.prompt)) for r in requests),
                         2048 * 4, adapter_names(requests), frozenset(), 3)

    def _retired(self, gen: Generation) -> None:
        self.running.pop(id(gen), None)
        self.outstanding -= 1

    async def _produce(self, gen: Generation, request: GenerationRequest, n_prompt: int) -> None:
        text = script_for(request)
        matched = None
        for stop in request.stop:
            cut = text.find(stop)
            if cut >= 0:
                text, matched = text[:cut], stop
        limit = request.max_tokens if request.max_tokens is not None else len(text)
        out = text[:limit]
        for i, char in enumerate(out):
            await asyncio.sleep(0)
            while i == 1 and self.hold is not None and not self.hold.is_set() \
                    and not gen.cancelled and self.aborted is None:  # noqa: ASYNC110  (any of three ends it; only one is an event)
                await asyncio.sleep(0.005)
            if gen.cancelled or self.aborted is not None:
                break
            last = i == len(out) - 1
            finish = ("length" if limit < len(text) else "stop") if last else None
            event = self._event(request, char, finish, Usage(n_prompt, i + 1, self.cached_tokens) if last else None)
            if i == 0:
                event = dataclasses.replace(event, cached_tokens=self.cached_tokens)
            gen._push(dataclasses.replace(event, stop_sequence=matched) if finish == "stop" else event)
        else:
            if not out:
                gen._push(TokenEvent(finish_reason="stop", usage=Usage(n_prompt, 0), stop_sequence=matched))
            return
        if self.aborted is not None:
            gen._push(TokenEvent(error=ShuttingDown(self.aborted)))
        else:
            gen._push(TokenEvent(finish_reason="cancelled", usage=Usage(n_prompt, 0)))

    def _event(self, request: GenerationRequest, char: str, finish: str | None, usage: Usage | None) -> TokenEvent:
        token = ord(char) % N_VOCAB
        logprob = top = None
        if request.logprobs:
            logprob = self.logprob
            top = [TopLogprob(char, list(char.encode()), logprob)][: request.top_logprobs]
        return TokenEvent(text=char, token_id=token, token_text=char, token_bytes=list(char.encode()),
                          logprob=logprob, top_logprobs=top, finish_reason=finish, usage=usage)

    def abort(self, reason: str) -> None:
        self.aborted = reason

    def load_adapter(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the fake engine serves no adapters")

    def close(self, timeout: float = 0) -> None:
        pass


class FakeEmbedder:
    n_embd = 8
    outstanding = 0  # answers at once: never busy

    async def wait_idle(self) -> None:
        pass

    def abort(self, reason: str) -> None:
        pass

    async def embed(self, inputs: list[Any]) -> Embeddings:
        vectors = np.zeros((len(inputs), self.n_embd), dtype=np.float32)
        vectors[:, 0] = 1.0
        return Embeddings(vectors=vectors, prompt_tokens=sum(len(getattr(i, "text", "")) or 1 for i in inputs))

    def close(self) -> bool:
        return True
