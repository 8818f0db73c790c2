"""Per-sequence sampling: a llama.cpp sampler chain built from SamplingParams, plus logprobs."""

from __future__ import annotations

import ctypes
import math
import random
import time
from collections.abc import Callable

import llama_cpp
import numpy as np

from .errors import InvalidInput
from .grammar_guard import GrammarGuard
from .types import SamplingParams, TokenEvent, TopLogprob

# How many recent tokens presence/frequency/repeat penalties look at (llama.cpp's default).
PENALTY_LAST_N = 64


class SamplerChain:
    """Owns one `llama_sampler` chain; `sample()` picks a token and feeds it back to the chain.

    A grammar is kept out of the chain. Checking it against all 49k candidates costs 10+ ms a
    token inside a JSON string, several decode steps' worth, so, as llama.cpp's own
    common_sampler does, the chain picks first and the grammar checks that one token; only a
    token the grammar refuses makes it filter every candidate and the chain pick again.
    Greedy picks are the same as grammar-first: the best token is kept whenever it is allowed.
    A GrammarGuard bounds the grammar's work per token: past it, `sample()` raises GrammarTooCostly.
    """

    def __init__(self, params: SamplingParams, n_vocab: int, vocab: llama_cpp.llama_vocab_p) -> None:
        self._chain = None
        self._grammar = None
        self._n_vocab = n_vocab
        self.seed = params.seed if params.seed is not None else random.getrandbits(32)
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

        def add(smpl: llama_cpp.llama_sampler_p) -> None:
            llama_cpp.llama_sampler_chain_add(chain, smpl)

        if params.logit_bias:
            arr = (llama_cpp.llama_logit_bias * len(params.logit_bias))()
            for i, (token, bias) in enumerate(params.logit_bias.items()):
                arr[i].token = token  # type: ignore[assignment]  # ctypes converts the int
                arr[i].bias = bias
            add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), arr))
        if params.presence_penalty or params.frequency_penalty or params.repeat_penalty != 1.0:
            add(llama_cpp.llama_sampler_init_penalties(
                n_vocab, PENALTY_LAST_N, params.repeat_penalty,
                params.frequency_penalty, params.presence_penalty,
            ))
        if params.grammar is not None:
            grammar = llama_cpp.llama_sampler_init_grammar(vocab, params.grammar.encode(), b"root")
            if not grammar:
                llama_cpp.llama_sampler_free(chain)
                # The converter refuses the schemas llama.cpp would (left recursion among $refs);
                # this stays a 400 for whatever it may still miss. The reason is in llama.cpp's log.
                raise InvalidInput("llama.cpp refused the grammar made from this request's JSON schema "
                                   "(its reason is in the server log)", subject="grammar")
            self._grammar = grammar
            self._guard = GrammarGuard(grammar, vocab, params.grammar.encode())
            self.eos: int = llama_cpp.llama_vocab_eos(vocab)
            self._cand = (llama_cpp.llama_token_data * n_vocab)()
            self._cand_np = np.ctypeslib.as_array(self._cand)
            self._ids = np.arange(n_vocab, dtype=np.int32)
            self._cur = llama_cpp.llama_token_data_array(self._cand, n_vocab, -1, False)
            self._one = (llama_cpp.llama_token_data * 1)()
            self._one_arr = llama_cpp.llama_token_data_array(self._one, 1, -1, False)
        if params.greedy:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(llama_cpp.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(params.temperature))
            add(llama_cpp.llama_sampler_init_dist(self.seed & 0xFFFFFFFF))
        self._chain = chain

    def sample(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        """Sample from the logits of batch position `index`; the samplers accept the token themselves."""
        if self._grammar is None:
            sampled: int = llama_cpp.llama_sampler_sample(self._chain, ctx, index)
            return sampled
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(self._n_vocab,))
        token = self._pick(logits, with_grammar=False)
        started = time.perf_counter()
        if not self._allowed(token):
            self._guard.check(started)  # the full filter costs the live stacks times the vocabulary
            token = self._pick(logits, with_grammar=True)
            if not self._allowed(token):
                # Nothing the grammar allows is left (all of it at -inf). llama.cpp aborts the
                # process when a grammar accepts a token it refuses: end the sequence instead.
                return self.eos
        llama_cpp.llama_sampler_accept(self._grammar, token)
        self._guard.check(started)  # before the next token's work, which the stacks kept now multiply
        llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    def _allowed(self, token: int) -> bool:
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 1.0, 0.0  # type: ignore[assignment]
        self._one_arr.size, self._one_arr.selected, self._one_arr.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(self._one_arr))
        return self._one[0].logit != -math.inf

    def _pick(self, logits: np.ndarray, with_grammar: bool) -> int:
        cand = self._cand_np
        cand["id"] = self._ids  # the chain may have sorted them
        cand["logit"] = logits
        cand["p"] = 0.0
        self._cur.data, self._cur.size, self._cur.selected, self._cur.sorted = self._cand, self._n_vocab, -1, False
        if with_grammar:
            llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(self._cur))
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(self._cur))
        return int(self._cur.data[self._cur.selected].id)

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar is not None:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None

    def __del__(self) -> None:
        self.close()


def log_softmax_row(ctx: llama_cpp.llama_context_p, index: int, n_vocab: int) -> np.ndarray:
    """Log-probabilities of the model's raw distribution at batch position `index` (a copy)."""
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(n_vocab,))
    logits = logits.astype(np.float64)
    top = logits.max()
    row: np.ndarray = logits - (top + np.log(np.exp(logits - top).sum()))
    return row


def top_logprobs(logprobs: np.ndarray, n: int, piece: Callable[[int], bytes]) -> list[TopLogprob]:
    """The `n` most likely tokens, best first, with their text and bytes."""
    if n <= 0:
        return []
    idx = np.argpartition(-logprobs, n)[:n]
    idx = idx[np.argsort(-logprobs[idx])]
    out = []
    for token in idx.tolist():
        raw = piece(token)
        out.append(TopLogprob(token=raw.decode("utf-8", "replace"), bytes=list(raw), logprob=float(logprobs[token])))
    return out


def token_event(token: int, piece: bytes, text: str, logprobs: np.ndarray | None, n_top: int,
                pieces: Callable[[int], bytes]) -> TokenEvent:
    """The event for one sampled token: the text it releases, its bytes and, when asked, its logprobs."""
    return TokenEvent(
        text=text,
        token_id=token,
        token_text=piece.decode("utf-8", "replace"),
        token_bytes=list(piece),
        logprob=float(logprobs[token]) if logprobs is not None else None,
        top_logprobs=top_logprobs(logprobs, n_top, pieces) if logprobs is not None else None,
    )
