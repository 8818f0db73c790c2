"""The thinking-block splitter (server/core/reasoning.py) on outputs shaped like real thinking models'."""

from __future__ import annotations

import pytest

from nomoat.core.reasoning import ReasoningSplitter, split_reasoning

# Shapes recorded from real models: Qwen3 (template leaves the tag to the model), DeepSeek-R1
# distills (the template opens <think> in the prompt), SmolLM3 (/think mode), an empty block
# (Qwen3 with enable_thinking false) and a block max_tokens cut.
CASES = [
    ("<think>\nThe user greets me. I should greet back.\n</think>\n\nHello! How can I help?", False,
     "The user greets me. I should greet back.", "Hello! How can I help?"),
    ("Okay, 2+2 is 4.\n</think>\n\nThe answer is **4**.", True, "Okay, 2+2 is 4.", "The answer is **4**."),
    ("<think>\n\n</think>\n\nParis is the capital of France.", False, "", "Paris is the capital of France."),
    ("<think>\nLet me count the letters: s-t-r-a-w", False, "Let me count the letters: s-t-r-a-w", ""),
    ("No thinking here, and a <think> later stays text.", False, None, "No thinking here, and a <think> later stays text."),
    ("  <thin", False, None, "  <thin"),
    ("", False, None, ""),
    ("x < y </think", True, "x < y </think", ""),
]


@pytest.mark.parametrize(("text", "started", "reasoning", "content"), CASES)
def test_finished_output(text: str, started: bool, reasoning: str | None, content: str) -> None:
    assert split_reasoning(text, started) == (reasoning, content)


@pytest.mark.parametrize(("text", "started", "reasoning", "content"), CASES)
@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_streamed_in_any_pieces_says_the_same(text: str, started: bool, reasoning: str | None, content: str,
                                              size: int) -> None:
    splitter = ReasoningSplitter(started)
    pieces = []
    for i in range(0, len(text), size):
        pieces += splitter.feed(text[i:i + size])
    pieces += splitter.finish()
    assert "".join(t for k, t in pieces if k == "reasoning") == (reasoning or "")
    assert "".join(t for k, t in pieces if k == "content") == content


def test_reasoning_streams_as_it_comes() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed("<think>") == []
    assert splitter.feed("I think") == [("reasoning", "I think")]
    assert splitter.feed(" so </th") == [("reasoning", " so")]
    assert splitter.feed("ink>\n\nYes") == [("content", "Yes")]
    assert not splitter.in_reasoning
