"""A client's own GBNF `grammar` (server/core/user_grammar.py): what llama.cpp can parse passes, the rest
is a 400 naming the problem; on chat and completions, in process over the fake engine."""

from __future__ import annotations

from typing import Any

import llama_cpp
import pytest
from support.inprocess import MODEL
from test_grammar_limits import _vocab

from nomoat.core.user_grammar import GrammarError, check_grammar

GOOD = [
    'root ::= "yes" | "no"',
    'root ::= "<think>" [^<]* "</think>" answer\nanswer ::= [a-z ]+  # a comment\n',
    'root ::= ( "a" | [b-c] )* x{2,5}\nx ::= "\\x41" "\\u00e9" [\\]] .',
    'root ::= "a"{3,} "b"{0,4}\n\n# trailing comment',
    'root ::= (\n  "a"\n  | "b"\n)',
    'root ::= "a"{0000000000010} "b"{00,0000000000003}',
]
BAD = [
    ("", "has no rules"),
    ('root ::= "yes', "unterminated string"),
    ("root :: x", "expecting ::="),
    ("root ::= x", "'x' is used but not defined"),
    ('foo ::= "x"', "named 'root'"),
    ('root ::= ("a"', "expecting )"),
    ('root ::= * "a"', "needs an item before it"),
    ('root ::= "\\q"', "unknown escape"),
    ('root ::= "a"{5,2}', "m <= n"),
    ('root ::= "a"{100000}', "repetition of more than"),
    # llama.cpp reads every digit: leading zeros hide nothing (only 8 digits were read here once).
    ('root ::= "a"{0000000001001}', "repetition of more than 1000"),
    ('root ::= ("a"{0000000002000}){0000000002000}', "repetition of more than 1000"),
    ('root ::= "a"{0,0000000001001}', "repetition of more than 1000"),
    ('root ::= "a"{' + "9" * 5000 + "}", "repetition of more than 1000"),
    ('root ::= "a"\n# \x00\nroot ::= "b"', "a NUL character"),  # llama.cpp reads only up to it
    ('root ::= ' + "(" * 100 + '"a"' + ")" * 100, "nested more than"),
    ("root ::= " + " | ".join(f'"{i}"' for i in range(300)), "alternatives"),
    ('root ::= "x"{0,300}', "alternatives"),
    ("root ::= [a-", "unterminated character class"),
    ('root ::= "a" )', "expecting a newline"),
    ('root ::= "' + "a" * 200_000 + '"', "bytes"),
]


@pytest.mark.parametrize("gbnf", GOOD)
def test_what_passes_is_what_llama_cpp_parses(gbnf: str) -> None:
    check_grammar(gbnf)
    _, vocab = _vocab()
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    assert sampler, gbnf
    llama_cpp.llama_sampler_free(sampler)


@pytest.mark.parametrize(("gbnf", "problem"), BAD)
def test_a_bad_or_costly_grammar_is_named(gbnf: str, problem: str) -> None:
    with pytest.raises(GrammarError) as exc:
        check_grammar(gbnf)
    assert problem in exc.value.message
    assert exc.value.param == "grammar"


def _error(r: Any, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text
    return r.json()["error"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_both_routes_take_a_grammar_and_refuse_a_bad_one(fake, path: str) -> None:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 4}
    body |= {"prompt": "hi"} if "chat" not in path else {"messages": [{"role": "user", "content": "hi"}]}
    assert fake.client.post(path, json={**body, "grammar": 'root ::= "yes" | "no"'}).status_code == 200
    assert fake.engine.submitted[-1].sampling.grammar == 'root ::= "yes" | "no"'
    error = _error(fake.client.post(path, json={**body, "grammar": "root ::= nope"}))
    assert error["param"] == "grammar" and "'nope' is used but not defined" in error["message"]
    assert error["code"] == "invalid_grammar"


@pytest.mark.parametrize("conflict", [
    {"response_format": {"type": "json_object"}},
    {"tool_choice": "required"},
    {"tool_choice": {"type": "function", "function": {"name": "f"}}},
])
def test_a_grammar_with_another_constraint_is_refused(fake, conflict: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    r = fake.client.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": tools,
        "grammar": 'root ::= "x"', **conflict})
    error = _error(r)
    assert error["param"] == "grammar" and "send one of them" in error["message"]
