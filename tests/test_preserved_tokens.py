"""A family's control tokens render as text when generated (its ChatFormat.preserved, as llama.cpp's server renders a
format's preserved_tokens), so the calls and thinking they carry can be read; other special tokens render as nothing.
On the real vocabulary: SmolLM2's `<repo_name>` is one control token; `<think>` is spelled in ordinary tokens."""

from __future__ import annotations

from support.real_engine import spec

from nomoat.engine.model import LoadedModel


def test_preserved_markers_that_are_control_tokens_render_as_text() -> None:
    model = LoadedModel(spec(name="m", n_ctx=256))
    try:
        (repo,) = model.tokenize("<repo_name>", add_bos=False)
        assert model.piece(repo) == b""  # a control token renders as nothing by default
        preserved = model._control_tokens(("<repo_name>", "<think>", "[TOOL_CALLS]"))
        assert preserved == {repo}  # markers spelled in ordinary tokens render as text anyway
        model._preserved, model._pieces = preserved, {}
        assert model.piece(repo) == b"<repo_name>"
        assert model.chat_format.name == "generic"  # SmolLM2's ChatML template marks no family
    finally:
        model.close()
