"""A GGUF's tokenizer and chat template without its weights or a context (llama.cpp's vocab_only load): what a
process that does not serve the model (the trainer, a job's parent) renders and tokenizes with, as serving does."""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp

from .chat_template import CHATML, ChatTemplate
from .errors import ModelFileError


def tokenize(vocab: llama_cpp.llama_vocab_p, text: str, *, add_bos: bool, special: bool) -> list[int]:
    """llama.cpp's tokens for `text`; `special` reads control tokens written as text (`<|im_end|>`)."""
    data = text.encode("utf-8")
    size = len(data) + 8
    buf = (llama_cpp.llama_token * size)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, size, add_bos, special)
    if n < 0:
        size = -n
        buf = (llama_cpp.llama_token * size)()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, size, add_bos, special)
    return list(buf[:n])


def token_bytes(vocab: llama_cpp.llama_vocab_p, token: int, *, special: bool) -> bytes:
    """A token's bytes; `special` renders control tokens as their text (`<|im_end|>`)."""
    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, special)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, special)
    return buf.raw[: max(n, 0)]


def template_source(model: llama_cpp.llama_model_p, override: str | None) -> str:
    """The template the server renders with: models.toml's `override`, else the GGUF's, else ChatML."""
    if override is not None:
        return override
    raw = llama_cpp.llama_model_chat_template(model, None)
    return raw.decode("utf-8") if raw else CHATML


def chat_template_for(model: llama_cpp.llama_model_p, source: str) -> ChatTemplate:
    """`source` compiled with the model's BOS and EOS text bound."""
    vocab = llama_cpp.llama_model_get_vocab(model)

    def text(token: int) -> str:
        return token_bytes(vocab, token, special=True).decode("utf-8", "replace") if token >= 0 else ""

    return ChatTemplate(source, bos_token=text(llama_cpp.llama_vocab_bos(vocab)),
                        eos_token=text(llama_cpp.llama_vocab_eos(vocab)))


class VocabFile:
    """A GGUF's vocabulary and chat template, loaded without weights; `close()` frees it."""

    def __init__(self, path: Path, *, chat_template: str | None = None) -> None:
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise ModelFileError(f"{path}: llama.cpp could not read this file's vocabulary")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.template_source = template_source(self._model, chat_template)
        self.chat_template = chat_template_for(self._model, self.template_source)

    def tokenize(self, text: str, *, add_bos: bool, special: bool = True) -> list[int]:
        return tokenize(self._vocab, text, add_bos=add_bos, special=special)

    def token_bytes(self, token: int, *, special: bool) -> bytes:
        return token_bytes(self._vocab, token, special=special)

    def prompt_tokens(self, text: str) -> list[int]:
        """A rendered chat text's tokens as the server makes them: BOS added unless the template wrote it."""
        bos = self.chat_template.bos_token
        return self.tokenize(text, add_bos=self.add_bos and not (bos and text.startswith(bos)))

    def close(self) -> None:
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> VocabFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_chat_template(path: Path, override: str | None = None) -> str:
    """The template text the server renders `path` with (override, the GGUF's, or ChatML), read without a
    context: what a fine-tuning job puts in its TrainSpec."""
    with VocabFile(path, chat_template=override) as vocab:
        return vocab.template_source
