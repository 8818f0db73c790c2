"""Per-sequence sampling: a llama.cpp sampler chain built from SamplingParams, plus logprobs."""

from __future__ import annotations

import random

import llama_cpp
import numpy as np

from ..errors import InvalidRequestError
from .types import SamplingParams, TopLogprob

# How many recent tokens presence/frequency/repeat penalties look at (llama.cpp's default).
PENALTY_LAST_N = 64


class SamplerChain:
    """Owns one `llama_sampler` chain; `sample()` picks a token and feeds it back to the chain."""

    def __init__(self, params: SamplingParams, n_vocab: int, vocab: llama_cpp.llama_vocab_p) -> None:
        self._chain = None
        self.seed = params.seed if params.seed is not None else random.getrandbits(32)
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = lambda smpl: llama_cpp.llama_sampler_chain_add(chain, smpl)  # noqa: E731
        if params.logit_bias:
            arr = (llama_cpp.llama_logit_bias * len(params.logit_bias))()
            for i, (token, bias) in enumerate(params.logit_bias.items()):
                arr[i].token = token
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
                raise InvalidRequestError("the grammar could not be parsed", param="grammar")
            add(grammar)
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
        """Sample from the logits of batch position `index`; the chain accepts the token itself."""
        return llama_cpp.llama_sampler_sample(self._chain, ctx, index)

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None

    def __del__(self) -> None:
        self.close()


def log_softmax_row(ctx: llama_cpp.llama_context_p, index: int, n_vocab: int) -> np.ndarray:
    """Log-probabilities of the model's raw distribution at batch position `index` (a copy)."""
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(n_vocab,))
    logits = logits.astype(np.float64)
    top = logits.max()
    return logits - (top + np.log(np.exp(logits - top).sum()))


def top_logprobs(logprobs: np.ndarray, n: int, piece) -> list[TopLogprob]:
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
