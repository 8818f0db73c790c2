"""OpenAI's sampling fields into the engine's SamplingParams."""

from __future__ import annotations

from ..engine.types import SamplingParams
from ..errors import InvalidRequestError
from .protocol import _SamplingFields


def sampling_params(req: _SamplingFields, n_vocab: int, seed_offset: int,
                    grammar: str | None = None) -> SamplingParams:
    bias = {}
    for key, value in (req.logit_bias or {}).items():
        token = int(key)  # the protocol model admits only ASCII integers
        if not 0 <= token < n_vocab:
            raise InvalidRequestError(f"logit_bias token id {token} is outside the vocabulary", param="logit_bias")
        bias[token] = value
    return SamplingParams(
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        min_p=req.min_p or 0.0,
        repeat_penalty=req.repeat_penalty or 1.0,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        # Choices of one request must differ, and stay reproducible for a given seed.
        seed=None if req.seed is None else (req.seed + seed_offset) & 0xFFFFFFFF,
        logit_bias=bias,
        grammar=grammar,
    )
