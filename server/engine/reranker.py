"""Reranking: a query scored against documents by a model with rank pooling, batched on the embedder's worker pattern."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import llama_cpp
import numpy as np

from .embedder import MAX_REQUEST_TOKENS, SEQUENCES_PER_BATCH, Embedder, _Job, _plan
from .errors import EngineError, InvalidInput, PromptTooLong
from .gguf_header import GGUFLayoutError, read_metadata
from .model import LoadedModel
from .types import TextPrompt

log = logging.getLogger(__name__)

RANK = llama_cpp.LLAMA_POOLING_TYPE_RANK


@dataclass(frozen=True)
class Scores:
    """One request's answer: llama.cpp's raw score per (query, document) pair, and the tokens they took."""

    scores: np.ndarray  # shape (n_pairs,), float32
    prompt_tokens: int


def pools_by_rank(metadata: Callable[[str], str | None]) -> bool:
    """Whether a model is a reranker: its GGUF declares rank pooling (llama-server's `--rerank` needs the same).

    BERT-style rerankers (a `cls`/`cls.output` head) and Qwen3-style ones (a yes/no head and a
    `tokenizer.chat_template.rerank` prompt) are both converted with `<arch>.pooling_type` = 4.
    """
    arch = metadata("general.architecture")
    return arch is not None and metadata(f"{arch}.pooling_type") == str(int(RANK))


def file_kind(path: Path) -> str | None:
    """A model file's kind from its header, without loading it: "reranker" (rank pooling) or "chat"; None when it
    cannot be read (its load says why). Blocking."""
    try:
        stat = path.stat()
        return "reranker" if _header_pools_by_rank(str(path), (stat.st_mtime_ns, stat.st_size, stat.st_ino)) else "chat"
    except (OSError, GGUFLayoutError):
        return None


@functools.lru_cache(maxsize=64)
def _header_pools_by_rank(path: str, stamp: tuple[int, int, int]) -> bool:
    """Once per file version (`stamp`)."""
    values = read_metadata(Path(path), lambda key: key == "general.architecture" or key.endswith(".pooling_type"))
    return pools_by_rank(lambda key: None if values.get(key) is None else str(values[key]))


class Reranker(Embedder):
    """Scores (query, document) pairs for a model with rank pooling, on a llama.cpp context of its own.

    Its context pools by rank inside the graph (the classifier head, or a Qwen3 reranker's yes/no
    softmax), which needs each pair whole in one micro-batch: a pair holds at most the model's n_batch tokens
    (llama-server's n_ubatch, 512 by default; an encoder's attention over a whole 8k context would
    need gigabytes of compute buffer), and a batch of pairs shares that many. Each
    pair's score is the first value llama.cpp pools for its sequence, as llama-server's
    `send_rerank` reads it (a raw logit for a BERT-style head; no sigmoid applied). Pairs are
    formatted as llama-server's `format_prompt_rerank` does.
    """

    context_pooling = RANK

    def __init__(self, model: LoadedModel, *, queue_size: int, max_input_tokens: int | None = None) -> None:
        super().__init__(model, queue_size=queue_size, max_input_tokens=max_input_tokens)
        self._whole_inputs = True
        self._template = model.metadata("tokenizer.chat_template.rerank")
        vocab = model.vocab
        eos = llama_cpp.llama_vocab_eos(vocab)
        self._eos = eos if eos != llama_cpp.LLAMA_TOKEN_NULL else llama_cpp.llama_vocab_sep(vocab)
        self._sep = llama_cpp.llama_vocab_sep(vocab)
        self._add_eos = bool(llama_cpp.llama_vocab_get_add_eos(vocab))
        self._add_sep = bool(llama_cpp.llama_vocab_get_add_sep(vocab))

    def _read_pooling(self, model: LoadedModel) -> int:
        return int(RANK)

    def _context_batch(self) -> int:
        return int(min(self.n_ctx, self.model.spec.n_batch))

    async def score(self, queries: Sequence[str], documents: Sequence[str], *, field: str = "documents") -> Scores:
        """Score each document against its query (one query: against that one), in order. Cancelling the awaiting
        task stops the work at its next decode. `field` names the documents in errors ("documents[3] ...")."""
        if len(queries) not in (1, len(documents)):
            raise ValueError("one query, or one per document")
        job = _Job([TextPrompt(d) for d in documents])
        return await self._call(job, partial(self._score, list(queries), job, field))

    def pair_tokens(self, query: str, document: str) -> list[int]:
        """One pair's tokens as llama-server builds them: the model's rerank template filled in, or
        BOS query EOS SEP document EOS (each special token where the vocabulary adds it)."""
        model = self.model
        if self._template is not None:
            prompt = self._template.replace("{query}", query).replace("{document}", document)
            return model.tokenize(prompt, add_bos=False, special=True)
        tokens = [model.bos_id] if model.add_bos else []
        tokens += model.tokenize(query, add_bos=False, special=False)
        tokens += [self._eos] if self._add_eos else []
        tokens += [self._sep] if self._add_sep else []
        tokens += model.tokenize(document, add_bos=False, special=False)
        tokens += [self._eos] if self._add_eos else []
        return tokens

    # --- worker thread -----------------------------------------------------------

    def _score(self, queries: list[str], job: _Job, field: str) -> Scores:
        self._check_wanted(job)
        limit = min(self._context_batch(), self.max_input_tokens or self.n_ctx)
        pairs = []
        for i, item in enumerate(job.inputs):
            assert isinstance(item, TextPrompt), "rank() makes text inputs"
            tokens = self.pair_tokens(queries[i if len(queries) > 1 else 0], item.text)
            if not tokens:
                raise InvalidInput(f"{field}[{i}] and its query make no tokens", subject=f"{field}[{i}]")
            if len(tokens) > limit:
                raise PromptTooLong(
                    f"{field}[{i}] makes {len(tokens)} tokens with its query; this model scores at most {limit} "
                    "tokens per query and document together (its n_batch and n_ctx): shorten or split the document",
                    subject=f"{field}[{i}]",
                )
            pairs.append(tokens)
        total = sum(len(t) for t in pairs)
        if total > MAX_REQUEST_TOKENS:
            raise InvalidInput(f"the pairs hold {total} tokens together; at most {MAX_REQUEST_TOKENS} per request",
                               subject=field)
        if self._ctx is None:
            self._create_context()
        scores = np.empty(len(pairs), dtype=np.float32)
        for group in _plan([len(t) for t in pairs], self._n_batch, SEQUENCES_PER_BATCH):
            if self._memory is not None:
                llama_cpp.llama_memory_clear(self._memory, True)
            self._decode_pieces([(seq, pairs[i], 0) for seq, i in enumerate(group)], job)
            for seq, i in enumerate(group):
                pooled = llama_cpp.llama_get_embeddings_seq(self._ctx, seq)
                if not pooled:
                    raise EngineError(f"llama.cpp pooled no score for {field}[{i}]")
                scores[i] = pooled[0]
        return Scores(scores=scores, prompt_tokens=total)
