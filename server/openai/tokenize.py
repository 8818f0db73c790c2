"""llama.cpp's tokenizer routes, POST /tokenize, /detokenize and /apply-template: a model's vocabulary and
chat template without generating (no generation slot; adapters change neither)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from ..core.fields import Lenient, parse
from ..core.generate import GenerationCore
from ..engine.face import EngineFace, Vocabulary
from .chat import chat_prompt, read_tools
from .protocol import ChatCompletionRequest


class TokenizeRequest(Lenient):
    """As llama.cpp's server: the text to tokenize, and how."""

    content: str
    add_special: bool = Field(False, description="Add the model's BOS (and EOS) tokens, as a prompt gets them.")
    parse_special: bool = Field(True, description="Read control tokens written as text (`<|im_end|>`) as those tokens.")
    with_pieces: bool = Field(False, description="Return each token as {id, piece}: its text, or its bytes when "
                                                 "they are not valid UTF-8 alone.")
    model: str | None = None


class DetokenizeRequest(Lenient):
    tokens: list[int]
    model: str | None = None


class TokenizerRoutes:
    """The three handlers; one set per app. The work runs in the model's tokenizer pool, off the event loop."""

    def __init__(self, core: GenerationCore) -> None:
        self.core = core

    async def tokenize(self, request: Request) -> Response:
        req: TokenizeRequest = parse(TokenizeRequest, await self.core.body(request, "content"))
        engine = (await self.core.route(request, req.model, None)).engine
        return await _answer(engine, lambda vocab: {"tokens": _tokens(vocab, req)})

    async def detokenize(self, request: Request) -> Response:
        req: DetokenizeRequest = parse(DetokenizeRequest, await self.core.body(request, "tokens"))
        engine = (await self.core.route(request, req.model, None)).engine
        return await _answer(engine, lambda vocab: {"content": vocab.detokenize(req.tokens)})

    async def apply_template(self, request: Request) -> Response:
        """The text a chat request's template renders, generation prompt included: what chat evaluates."""
        req: ChatCompletionRequest = parse(ChatCompletionRequest, await self.core.body(request, "messages"))
        engine = (await self.core.route(request, req.model, None)).engine
        prompt = chat_prompt(req, read_tools(req), engine.info)
        return await _answer(engine, lambda vocab: {"prompt": vocab.chat_text(prompt)})


async def _answer(engine: EngineFace, work: Callable[[Vocabulary], dict[str, Any]]) -> Response:
    """`work(vocabulary)` as a JSON answer, done and encoded in the model's tokenizer pool: a body of
    megabytes is a million tokens, and their JSON alone would hold up the event loop."""
    body = await engine.read_vocabulary(
        lambda vocab: json.dumps(work(vocab), ensure_ascii=False, separators=(",", ":")).encode())
    return Response(body, media_type="application/json")


def _tokens(vocab: Vocabulary, req: TokenizeRequest) -> list[Any]:
    tokens = vocab.tokenize(req.content, add_bos=req.add_special, special=req.parse_special)
    if not req.with_pieces:
        return tokens
    return [{"id": t, "piece": _piece(vocab.token_bytes(t, special=True))} for t in tokens]


def _piece(raw: bytes) -> str | list[int]:
    # As llama.cpp's server: the text when the bytes are UTF-8 alone, else the bytes.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)
