"""OpenAI's sampling fields into the engine's SamplingParams, and llama.cpp's `grammar` extension."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from ..core.user_grammar import GrammarError, check_grammar
from ..engine.errors import InvalidInput
from ..engine.sampling_defaults import SamplingDefaults
from ..engine.types import SamplingParams
from ..errors import InvalidRequestError
from .protocol import _SamplingFields


def sampling_params(req: _SamplingFields, n_vocab: int, seed_offset: int, grammar: str | None,
                    defaults: SamplingDefaults) -> SamplingParams:
    """A field the request leaves out (None) takes the model's default; one it sends, even 0 or 1.0, is kept."""
    bias = {}
    for key, value in (req.logit_bias or {}).items():
        token = int(key)  # the protocol model admits only ASCII integers
        if not 0 <= token < n_vocab:
            raise InvalidRequestError(f"logit_bias token id {token} is outside the vocabulary", param="logit_bias")
        bias[token] = value
    return SamplingParams(
        temperature=defaults.temperature if req.temperature is None else req.temperature,
        top_p=defaults.top_p if req.top_p is None else req.top_p,
        top_k=defaults.top_k if req.top_k is None else req.top_k,
        min_p=defaults.min_p if req.min_p is None else req.min_p,
        repeat_penalty=defaults.repeat_penalty if req.repeat_penalty is None else req.repeat_penalty,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        # Choices of one request must differ, and stay reproducible for a given seed.
        seed=None if req.seed is None else (req.seed + seed_offset) & 0xFFFFFFFF,
        logit_bias=bias,
        grammar=grammar,
    )


async def request_grammar(req: _SamplingFields) -> str | None:
    """The request's own `grammar`, checked off the event loop (a large one takes a while)."""
    if req.grammar is None:
        return None
    await asyncio.to_thread(check_grammar, req.grammar)
    return req.grammar


@contextmanager
def grammar_refusal(req: _SamplingFields) -> Iterator[None]:
    """A grammar llama.cpp refuses after the check (left recursion, say) is the request's `grammar` at fault."""
    try:
        yield
    except InvalidInput as exc:
        if req.grammar is None or exc.subject != "grammar":
            raise
        raise GrammarError("grammar: llama.cpp refused it (left recursion, or see the server log for its reason)",
                           param="grammar", code="invalid_grammar") from None
