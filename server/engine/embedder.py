"""Embeddings: a second llama.cpp context on a loaded model, pooling token states into unit vectors on its own thread."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import llama_cpp
import numpy as np

from .errors import Busy, EngineError, InvalidInput, PromptTooLong, ShuttingDown
from .in_flight import InFlight
from .model import LoadedModel
from .types import TextPrompt, TokenPrompt
from .worker import Job, Worker

log = logging.getLogger(__name__)

EmbeddingInput = TextPrompt | TokenPrompt
_T = TypeVar("_T")

# Inputs decoded together in one llama_decode call (each is one sequence of the batch).
SEQUENCES_PER_BATCH = 64
# OpenAI refuses a request whose inputs sum past this; on a CPU it is already many minutes of work.
MAX_REQUEST_TOKENS = 300_000

_POOLING_NAMES = {
    llama_cpp.LLAMA_POOLING_TYPE_MEAN: "mean",
    llama_cpp.LLAMA_POOLING_TYPE_CLS: "cls",
    llama_cpp.LLAMA_POOLING_TYPE_LAST: "last",
    llama_cpp.LLAMA_POOLING_TYPE_RANK: "rank",
}


@dataclass(frozen=True)
class Embeddings:
    """One request's answer: a unit-length float32 row per input, and the tokens they took."""

    vectors: np.ndarray  # shape (n_inputs, n_embd)
    prompt_tokens: int


class _Cancelled(Exception):
    """The request went away; its remaining batches are skipped (nobody reads the result)."""


@dataclass(eq=False)
class _Job:
    inputs: list[EmbeddingInput]
    cancelled: threading.Event = field(default_factory=threading.Event)


class Embedder:
    """Computes embeddings for one loaded model on a llama.cpp context of its own.

    The context shares the model's weights (so its load settings, `repack` included) but not
    the generation context, whose KV and adapter state it never touches. Every llama.cpp call
    happens on this object's worker thread; the context is created there on the first request.

    llama.cpp pools inside the graph only when a sequence fits one micro-batch, which for a
    causal model would mean micro-batches (and a compute buffer holding logits for every
    token) as long as the whole context. Instead the context returns per-token states
    (pooling NONE), long inputs go through in `n_batch`-token chunks over the KV cache, and
    the pooling the GGUF declares (mean when it declares none) is done here. A non-causal
    model sees each input whole, as it must.
    """

    # The pooling the context itself does: none, since _pool pools (a reranker's context pools by rank).
    context_pooling = llama_cpp.LLAMA_POOLING_TYPE_NONE

    def __init__(self, model: LoadedModel, *, queue_size: int, max_input_tokens: int | None = None) -> None:
        self.model = model
        self.pooling = self._read_pooling(model)
        self.n_embd = llama_cpp.llama_model_n_embd_out(model.model)
        self.n_ctx = model.n_ctx
        self.max_input_tokens = max_input_tokens
        self.capacity = queue_size + 1
        self._whole_inputs = model.metadata(f"{model.architecture}.attention.causal") == "false"
        self._in_flight = InFlight()  # requests being embedded or queued
        self._ctx: llama_cpp.llama_context_p | None = None
        self._memory: llama_cpp.llama_memory_t | None = None
        self._batch: Any = None  # a llama_batch once the context exists; ctypes fields defy static types
        self._n_batch = 0
        # Each request is one call on the worker, run in turn; started last: its thread reads everything above.
        self._worker = Worker(f"embed-{model.spec.name}", _run_all)

    # --- event loop side ---------------------------------------------------------

    @property
    def outstanding(self) -> int:
        return self._in_flight.count

    async def wait_idle(self) -> None:
        """Return once no request is outstanding (at once when none is), woken where the last one ends."""
        await self._in_flight.wait_idle()

    async def embed(self, inputs: Sequence[EmbeddingInput]) -> Embeddings:
        """Embed every input, in order. Cancelling the awaiting task stops the work at its next decode."""
        job = _Job(list(inputs))
        return await self._call(job, partial(self._embed, job))

    async def _call(self, job: _Job, work: Callable[[], _T]) -> _T:
        """Run `work` (one request, for `job`) on the worker, refused past capacity; cancelling stops it."""
        if self._in_flight.count >= self.capacity:
            raise Busy(
                f"model {self.model.spec.name!r} is at capacity ({self._in_flight.count} "
                "requests running or queued); retry shortly", retry_after=1,
            )
        # Counted before the first await, so a reload that retires this model waits for it.
        self._in_flight.count += 1
        try:
            return await asyncio.wrap_future(self._worker.call(work))
        except asyncio.CancelledError:
            job.cancelled.set()
            raise
        finally:
            self._in_flight.count -= 1

    def abort(self, reason: str) -> None:
        """Fail every queued and running request now with `ShuttingDown(reason)`; admit nothing after.

        For when a shutdown's grace period is over: the requests answer at once, even while the
        worker is inside a long llama_decode, which stops at its next batch. Safe from any thread.
        """
        self._worker.abort(lambda: ShuttingDown(reason))

    def close(self, timeout: float = 30.0) -> bool:
        """Stop the worker and free the context; False when the worker did not stop in time.

        The context points into the model's weights: free the model only after this returned True.
        """
        if not self._worker.close(timeout):
            log.error("embeddings worker of %s did not stop within %.0fs", self.model.spec.name, timeout)
            return False
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
            log.info("freed the embeddings context of %s", self.model.spec.name)
        return True

    # --- worker thread -----------------------------------------------------------

    def _check_wanted(self, job: _Job) -> None:
        if self._worker.stopping:
            raise ShuttingDown()
        if job.cancelled.is_set():
            raise _Cancelled

    def _embed(self, job: _Job) -> Embeddings:
        self._check_wanted(job)
        tokens = [self._tokens(i, item) for i, item in enumerate(job.inputs)]
        total = sum(len(t) for t in tokens)
        if total > MAX_REQUEST_TOKENS:
            raise InvalidInput(
                f"the inputs hold {total} tokens together; at most {MAX_REQUEST_TOKENS} per request", subject="input",
            )
        if self._ctx is None:
            self._create_context()
        vectors = np.empty((len(tokens), self.n_embd), dtype=np.float32)
        for group in _plan([len(t) for t in tokens], self._n_batch, SEQUENCES_PER_BATCH):
            states = self._decode_group([tokens[i] for i in group], job)
            for i, rows in zip(group, states, strict=False):
                vectors[i] = _normalized(self._pool(rows))
        return Embeddings(vectors=vectors, prompt_tokens=total)

    def _tokens(self, index: int, item: EmbeddingInput) -> list[int]:
        model = self.model
        if isinstance(item, TokenPrompt):
            bad = next((t for t in item.tokens if not 0 <= t < model.n_vocab), None)
            if bad is not None:
                raise InvalidInput(
                    f"input[{index}]: token id {bad} is outside the vocabulary (0..{model.n_vocab - 1})",
                    subject=f"input[{index}]",
                )
            tokens = list(item.tokens)
        else:
            tokens = model.tokenize(item.text, add_bos=model.add_bos, special=True)
        if not tokens:
            raise InvalidInput(f"input[{index}] is empty", subject=f"input[{index}]")
        limit = min(self.n_ctx, self.max_input_tokens or self.n_ctx)
        if len(tokens) > limit:
            raise PromptTooLong(
                f"input[{index}] has {len(tokens)} tokens; this model embeds at most {limit} tokens per input.",
                subject=f"input[{index}]",
            )
        return tokens

    def _create_context(self) -> None:
        started = time.perf_counter()
        n_batch = self._context_batch()
        ctx = self._new_context(n_batch)
        if not self._whole_inputs and not llama_cpp.llama_get_memory(ctx):
            # No KV cache (an encoder such as BERT): chunks cannot build on each other.
            llama_cpp.llama_free(ctx)
            self._whole_inputs, n_batch = True, self.n_ctx
            ctx = self._new_context(n_batch)
        self._ctx, self._n_batch = ctx, n_batch
        self._memory = llama_cpp.llama_get_memory(ctx) or None
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        log.info("embeddings context for %s in %.2fs (n_ctx=%d, n_batch=%d, pooling=%s, dims=%d)",
                 self.model.spec.name, time.perf_counter() - started, self.n_ctx, n_batch,
                 _POOLING_NAMES[self.pooling], self.n_embd)

    def _context_batch(self) -> int:
        return int(self.n_ctx if self._whole_inputs else min(self.n_ctx, self.model.spec.n_batch))

    def _new_context(self, n_batch: int) -> llama_cpp.llama_context_p:
        spec = self.model.spec
        cparams = llama_cpp.llama_context_default_params()
        cparams.embeddings = True
        cparams.pooling_type = self.context_pooling
        cparams.n_ctx = self.n_ctx
        cparams.n_batch = cparams.n_ubatch = n_batch
        cparams.n_seq_max = SEQUENCES_PER_BATCH
        cparams.kv_unified = True  # the batch's sequences share the n_ctx cells; memory is cleared per batch
        cparams.n_threads = cparams.n_threads_batch = spec.n_threads
        cparams.no_perf = True
        spec.kv_types.apply(cparams)
        ctx: llama_cpp.llama_context_p = llama_cpp.llama_init_from_model(self.model.model, cparams)
        if not ctx:
            raise EngineError(f"llama.cpp could not create an embeddings context for model {spec.name!r} "
                              f"(n_ctx={self.n_ctx}, n_batch={n_batch})")
        return ctx

    def _decode_group(self, inputs: list[list[int]], job: _Job) -> list[np.ndarray]:
        """Per-token states of inputs decoded together; an input longer than n_batch goes alone, in chunks."""
        if self._memory is not None:
            llama_cpp.llama_memory_clear(self._memory, True)
        if len(inputs) == 1 and len(inputs[0]) > self._n_batch:
            tokens = inputs[0]
            chunks = [self._decode([(0, tokens[s:s + self._n_batch], s)], job)
                      for s in range(0, len(tokens), self._n_batch)]
            return [np.concatenate(chunks)]
        rows = self._decode([(seq, tokens, 0) for seq, tokens in enumerate(inputs)], job)
        bounds = np.cumsum([0, *(len(t) for t in inputs)])
        return [rows[a:b] for a, b in itertools.pairwise(bounds)]

    def _decode(self, pieces: list[tuple[int, list[int], int]], job: _Job) -> np.ndarray:
        """One llama_decode of (sequence, tokens, first position) pieces; the states of every token, in order."""
        n = self._decode_pieces(pieces, job)
        states = llama_cpp.llama_get_embeddings(self._ctx)
        copied: np.ndarray = np.ctypeslib.as_array(states, shape=(n, self.n_embd)).copy()
        return copied

    def _decode_pieces(self, pieces: list[tuple[int, list[int], int]], job: _Job) -> int:
        """One llama_decode of (sequence, tokens, first position) pieces; the number of tokens decoded."""
        self._check_wanted(job)
        batch = self._batch
        assert batch is not None, "made with the context"
        n = 0
        for seq, tokens, pos0 in pieces:
            for j, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = pos0 + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = True  # an embeddings context outputs every token anyway
                n += 1
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(self._ctx, batch)
        if rc != 0:
            raise EngineError(f"llama_decode failed while computing embeddings (code {rc})")
        return n

    def _read_pooling(self, model: LoadedModel) -> int:
        return _pooling_type(model)

    def _pool(self, rows: np.ndarray) -> np.ndarray:
        pooled: np.ndarray
        if self.pooling == llama_cpp.LLAMA_POOLING_TYPE_CLS:
            pooled = rows[0]
        elif self.pooling == llama_cpp.LLAMA_POOLING_TYPE_LAST:
            pooled = rows[-1]
        else:
            pooled = rows.mean(axis=0, dtype=np.float64)
        return pooled


def _run_all(jobs: list[Job]) -> None:
    """The worker's turn: the requests queued since the last one, in order (a stop ends the rest with ShuttingDown)."""
    for job in jobs:
        job()


def _pooling_type(model: LoadedModel) -> int:
    """The pooling the GGUF declares, mean when it declares none (generative models never do)."""
    declared = model.metadata(f"{model.architecture}.pooling_type")
    value = int(declared) if declared is not None and declared.isdigit() else llama_cpp.LLAMA_POOLING_TYPE_NONE
    if value == llama_cpp.LLAMA_POOLING_TYPE_RANK:
        raise InvalidInput(
            f"model {model.spec.name!r} is a reranker (rank pooling): it has no embeddings; "
            "it scores pairs at /v1/rerank and /v1/score", subject="model",
        )
    return value if value in _POOLING_NAMES else llama_cpp.LLAMA_POOLING_TYPE_MEAN


def _plan(lengths: list[int], n_batch: int, n_seq: int) -> list[list[int]]:
    """Input indices decoded together, in order: up to n_batch tokens and n_seq inputs; a longer input alone."""
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, n in enumerate(lengths):
        if current and (used + n > n_batch or len(current) >= n_seq):
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        groups.append(current)
    return groups


def _normalized(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return (vector / norm if norm > 0.0 else vector).astype(np.float32)
