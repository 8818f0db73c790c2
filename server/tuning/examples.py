"""Training examples: each line of a chat-format JSONL file rendered with the model's own chat template, tokenized
as the server tokenizes, with a loss mask that keeps only the assistant messages' tokens. No torch here, so the
parent can validate a file with it before any training.

An assistant message's tokens are the difference between the conversation rendered up to it with the generation
prompt and rendered through it: what the model itself would write after that prompt, its end-of-turn marker
included. Each such piece is tokenized on its own (prompt pieces as the server tokenizes a prompt, BOS included),
so the mask lines up with tokens exactly. `weight: 0` leaves a message out of the loss (OpenAI's rule; the
default is 1). An example longer than the cap is cut at its end, as OpenAI truncates; one left with no assistant
token to learn from is refused, naming its line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.chat_template import ChatTemplate
from ..engine.errors import InvalidInput
from ..engine.vocab_file import VocabFile


class ExampleError(ValueError):
    """A line of a training or validation file that cannot be trained on; the message names the line."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line


@dataclass(frozen=True)
class Example:
    """One conversation's tokens and which of them are learned (mask[i]: token i is a target)."""

    line: int
    tokens: tuple[int, ...]
    mask: tuple[bool, ...]
    truncated: bool

    @property
    def trained_tokens(self) -> int:
        return sum(self.mask)


def read_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number from 1, the parsed object) for each non-blank line; ExampleError for one that is not an
    object."""
    with path.open(encoding="utf-8") as file:
        for number, raw in enumerate(file, start=1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
            except ValueError as exc:
                raise ExampleError(number, f"not valid JSON ({exc})") from None
            if not isinstance(data, dict):
                raise ExampleError(number, "each line must be a JSON object with 'messages'")
            yield number, data


def _messages(number: int, data: dict[str, Any]) -> tuple[list[dict[str, Any]], list[bool]]:
    """The messages without their `weight`, and for each whether it is learned."""
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ExampleError(number, "'messages' must be a non-empty list")
    clean, learned = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ExampleError(number, f"messages[{i}] must be an object with a 'role'")
        weight = message.get("weight", 1)
        if weight not in (0, 1) or isinstance(weight, bool):
            raise ExampleError(number, f"messages[{i}].weight must be 0 or 1")
        if "weight" in message and message["role"] != "assistant":
            raise ExampleError(number, f"messages[{i}]: only assistant messages take a weight")
        clean.append({k: v for k, v in message.items() if k != "weight"})
        learned.append(message["role"] == "assistant" and weight == 1)
    if not any(learned):
        raise ExampleError(number, "no assistant message to learn from (each has weight 0, or there is none)")
    return clean, learned


class ExampleRenderer:
    """Renders and tokenizes examples for one model: its template text and its GGUF's vocabulary."""

    def __init__(self, vocab: VocabFile, template: ChatTemplate, *, max_tokens: int) -> None:
        self.vocab = vocab
        self.template = template
        self.max_tokens = max_tokens

    def render(self, number: int, data: dict[str, Any]) -> Example:
        messages, learned = _messages(number, data)
        tools = data.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise ExampleError(number, "'tools' must be a list")
        # Piece boundaries in the full text: (end of the text before each learned message, end of that message).
        pieces: list[tuple[str, bool]] = []
        done = ""
        for i, is_learned in enumerate(learned):
            if not is_learned:
                continue
            before = self._text(number, messages[:i], tools, prompt=True)
            through = self._text(number, messages[: i + 1], tools, prompt=False)
            if not (before.startswith(done) and through.startswith(before)):
                raise ExampleError(number, f"the chat template does not render messages[{i}] as a continuation "
                                           "of the conversation before it, so its tokens cannot be told apart")
            pieces += [(before[len(done):], False), (through[len(before):], True)]
            done = through
        full = self._text(number, messages, tools, prompt=False)
        if not full.startswith(done):
            raise ExampleError(number, "the chat template renders the whole conversation differently from its parts")
        pieces.append((full[len(done):], False))
        return self._tokenize(number, pieces)

    def _text(self, number: int, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, *,
              prompt: bool) -> str:
        try:
            return self.template.render(messages, tools=tools, add_generation_prompt=prompt)
        except InvalidInput as exc:
            raise ExampleError(number, str(exc)) from None

    def _tokenize(self, number: int, pieces: list[tuple[str, bool]]) -> Example:
        tokens: list[int] = []
        mask: list[bool] = []
        for index, (text, learned) in enumerate(pieces):
            if not text:
                continue
            # BOS only before the first piece, and only where the server adds it to a prompt.
            ids = self.vocab.prompt_tokens(text) if index == 0 else self.vocab.tokenize(text, add_bos=False)
            tokens += ids
            mask += [learned] * len(ids)
        truncated = len(tokens) > self.max_tokens
        tokens, mask = tokens[: self.max_tokens], mask[: self.max_tokens]
        # The first token is never a target: nothing comes before it to predict it from.
        if not any(mask[1:]):
            raise ExampleError(number, f"no assistant token is left within the first {self.max_tokens} tokens "
                                       "(the example is cut there)")
        return Example(line=number, tokens=tuple(tokens), mask=tuple(mask), truncated=truncated)

    def read(self, path: Path) -> list[Example]:
        """Every example of a JSONL file; ExampleError at the first bad line."""
        examples = [self.render(number, data) for number, data in read_lines(path)]
        if not examples:
            raise ExampleError(1, "the file has no examples")
        return examples


def open_renderer(base_gguf: Path, template_source: str, *, max_tokens: int) -> ExampleRenderer:
    """A renderer for the served model: its GGUF's vocabulary (no weights) and the template the server uses.
    Close it with `renderer.vocab.close()`."""
    vocab = VocabFile(base_gguf, chat_template=template_source)
    return ExampleRenderer(vocab, vocab.chat_template, max_tokens=max_tokens)
