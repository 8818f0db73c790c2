"""llama.cpp's tokenizer routes, POST /tokenize, /detokenize and /apply-template: a model's vocabulary and
chat template without generating (no generation slot; adapters change neither)."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..core.generate import GenerationCore
from ..engine.model import LoadedModel
from .chat import chat_prompt, read_tools
from .protocol import ChatCompletionRequest, Lenient, parse


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
        engine = self.core.route(request, req.model, None).engine
        tokens = await engine.vocabulary(_tokens, engine.model, req)
        return JSONResponse({"tokens": tokens})

    async def detokenize(self, request: Request) -> Response:
        req: DetokenizeRequest = parse(DetokenizeRequest, await self.core.body(request, "tokens"))
        engine = self.core.route(request, req.model, None).engine
        return JSONResponse({"content": await engine.vocabulary(engine.model.detokenize, req.tokens)})

    async def apply_template(self, request: Request) -> Response:
        """The text a chat request's template renders, generation prompt included: what chat evaluates."""
        req: ChatCompletionRequest = parse(ChatCompletionRequest, await self.core.body(request, "messages"))
        target = self.core.route(request, req.model, None)
        prompt = chat_prompt(req, read_tools(req), target)
        return JSONResponse({"prompt": await target.engine.vocabulary(target.engine.model.chat_text, prompt)})


def _tokens(model: LoadedModel, req: TokenizeRequest) -> list[Any]:
    tokens = model.tokenize(req.content, add_bos=req.add_special, special=req.parse_special)
    if not req.with_pieces:
        return tokens
    return [{"id": t, "piece": _piece(model.token_bytes(t, special=True))} for t in tokens]


def _piece(raw: bytes) -> str | list[int]:
    # As llama.cpp's server: the text when the bytes are UTF-8 alone, else the bytes.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)
