"""Ambiguous grammars (server/core/grammar_stacks.py): the model of llama.cpp's grammar stacks keeps the
stacks llama.cpp keeps, and a grammar (a client's own or one built from a schema) that would keep too
many parses alive at once is refused before llama.cpp runs it; the grammars nomoat builds pass."""

from __future__ import annotations

from typing import Any

import llama_cpp
import pytest
from test_grammar_limits import _vocab, convert

from nomoat.core import grammar_stacks
from nomoat.core.gbnf_rules import Parser
from nomoat.core.grammar_stacks import find_blowup
from nomoat.core.structured import SchemaError
from nomoat.core.user_grammar import GrammarError, check_grammar
from nomoat.engine.grammar_guard import MAX_LIVE_STACKS, GrammarGuard

WEDGE = 'root ::= a\na ::= "x" a "y" | "x" a "z" | "w"'  # issue #28: each x doubles llama.cpp's stacks


def _machine(text: str) -> grammar_stacks._Machine:
    parser = Parser(text)
    return grammar_stacks._Machine(parser.parse(), parser.ids["root"], list(parser.tokens))


def start_stacks(text: str) -> int:
    """How many stacks the model of llama.cpp starts `text` with."""
    return len(_machine(text).start())


def _char_token(vocab: Any, char: str) -> int:
    out = (llama_cpp.llama_token * 4)()
    assert llama_cpp.llama_tokenize(vocab, char.encode(), len(char.encode()), out, 4, False, False) == 1, char
    return out[0]


@pytest.mark.parametrize(("gbnf", "text"), [
    (WEDGE, "xxxxxxw"),
    ('root ::= ("a"?){0,50} "b"', "aaab"),
    ('root ::= ("a" | "a" "b" | [a-c]+)* "."', "abcab."),
    ('root ::= "{" ws ("\\"a\\"" ws ":" ws v)? "}"\nws ::= " "?\nv ::= [0-9]+ | "\\"" [^"]* "\\""', '{ "a": "x1'),
    ('root ::= [^x]* "x" | . "y"{2,4} .', "qyyy"),
    ('root ::= (x | "q")+\nx ::= "q" x "r" | "q"', "qqqqr"),
])
def test_the_model_keeps_the_stacks_llama_cpp_keeps(gbnf: str, text: str) -> None:
    """After each character, llama.cpp's own count of live stacks (read by the engine's guard) equals the model's."""
    _, vocab = _vocab()
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    assert sampler
    try:
        guard = GrammarGuard(sampler, vocab, gbnf.encode())
        machine = _machine(gbnf)
        stacks = machine.start()
        counts = [(guard.live_stacks(), len(stacks))]
        for char in text:
            llama_cpp.llama_sampler_accept(sampler, _char_token(vocab, char))
            stacks = machine.accept(stacks, ord(char))
            counts.append((guard.live_stacks(), len(stacks)))
    finally:
        llama_cpp.llama_sampler_free(sampler)
    assert all(ours == theirs for theirs, ours in counts), counts


def test_the_guard_trusts_the_layout_only_when_it_checks_out() -> None:
    _, vocab = _vocab()
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, WEDGE.encode(), b"root")
    try:
        assert GrammarGuard(sampler, vocab, WEDGE.encode()).live_stacks() == 3
        assert GrammarGuard(sampler, vocab, WEDGE.encode() + b"\0# unread").live_stacks() == 3  # a C string
        assert GrammarGuard(sampler, vocab, b"another grammar").live_stacks() is None
        assert GrammarGuard(sampler, vocab + 8, WEDGE.encode()).live_stacks() is None
    finally:
        llama_cpp.llama_sampler_free(sampler)


AMBIGUOUS = {
    "the issue's": (WEDGE, "xxxxxxxx"),
    "behind a prefix": ('root ::= "pre" [0-9]{0,20} "-" a\na ::= "x" a "y" | "x" a "z" | "w"', "pre-xxxxxxxx"),
    # 13 first characters with 8 parses each: a search that kept only the widest few would drop the x path.
    "beside a wide distraction": ("root ::= d | a\nd ::= " + " | ".join(f'"{c}{i}"' for c in "ABCDEFGHIJKLM" for i in range(8))
                                  + '\na ::= "x" a "y" | "x" a "z" | "w"', "xxxxxxxx"),
    "through a token reference": ('root ::= <[1]> a\na ::= "x" a "y" | "x" a "z" | "w"', "<[1]>xxxxxxxx"),
    "a nested optional repetition": ('root ::= (("a"?){0,30}){0,30} "b"', ""),
    "ambiguous concatenation": ('root ::= s\ns ::= "x" s "1" | "x" s "2" | "x" s "3" | "e"', "xxxxx"),
}


@pytest.mark.parametrize(("gbnf", "prefix"), AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
def test_an_ambiguous_grammar_is_refused_naming_the_bound(gbnf: str, prefix: str) -> None:
    blowup = find_blowup(gbnf)
    assert blowup is not None and blowup.prefix == prefix and blowup.stacks > MAX_LIVE_STACKS
    with pytest.raises(GrammarError) as exc:
        check_grammar(gbnf)
    assert exc.value.code == "invalid_grammar" and exc.value.param == "grammar"
    assert "ambiguous" in exc.value.message and f"limit of {MAX_LIVE_STACKS} live parse stacks" in exc.value.message
    assert f"{blowup.stacks} parses alive" in exc.value.message


@pytest.mark.parametrize("gbnf", [
    'root ::= "yes" | "no"',
    'root ::= ( "a" | [b-c] )* x{2,5}\nx ::= "\\x41" "\\u00e9" [\\]] .',
    'root ::= a\na ::= "x" a "y" | "w" a "z" | "v"',  # recursive, not ambiguous: one parse at a time
    "root ::= " + " | ".join(f'"v{i:03d}"' for i in range(250)),  # wide, each alternative one parse
    'root ::= "a"{0000000000010}',
])
def test_unambiguous_grammars_pass(gbnf: str) -> None:
    assert find_blowup(gbnf) is None
    check_grammar(gbnf)


def _wide_enum(n: int) -> dict:
    return {"enum": [f"value{i:03d}" for i in range(n)]}


SCHEMAS = {
    "enum of 256": _wide_enum(256),
    "128 optional properties": {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(128)}},
    "anyOf over one key": {"anyOf": [{"type": "object", "properties": {"a": {"type": t}}, "required": ["a"]}
                                     for t in ("string", "integer", "number", "boolean", "null", "array", "object")]},
    "nested arrays": {"type": "array", "items": {"type": "array", "items": {"type": "object", "properties": {
        "x": {"type": "number"}, "y": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}}},
    "any JSON": None,
}


@pytest.mark.parametrize("schema", SCHEMAS.values(), ids=SCHEMAS.keys())
def test_grammars_built_from_schemas_pass_with_room(schema: Any) -> None:
    """The widest schemas the other limits let through keep at most about half the bound alive."""
    gbnf = convert(schema, kind="json_object" if schema is None else "json_schema")
    assert find_blowup(gbnf, MAX_LIVE_STACKS // 2 + 8) is None


@pytest.mark.parametrize("schema", [
    {"anyOf": [{"type": "array", "items": {"$ref": "#"}}, {"type": "array", "items": {"$ref": "#"}, "maxItems": 1}]},
    {"$defs": {"n": {"anyOf": [
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/n"}}, "required": ["a"]},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/n"}, "b": {"type": "string"}}, "required": ["a"]},
        {"type": "null"}]}}, "$ref": "#/$defs/n"},
], ids=["arrays", "objects"])
def test_a_schema_whose_branches_overlap_at_every_level_is_refused(schema: Any) -> None:
    with pytest.raises(SchemaError) as exc:
        convert(schema)
    assert exc.value.code == "unsupported_schema" and "ambiguous" in exc.value.message
    assert f"limit of {MAX_LIVE_STACKS}" in exc.value.message


def test_the_search_is_bounded_by_its_work_not_the_grammar() -> None:
    """A grammar with more to explore than the budget: the search stops at the budget (and lets it pass:
    the engine's guard bounds it at runtime)."""
    wide = "root ::= " + " ".join(f'("k{i}" [a-z0-9]*)?' for i in range(200))
    machine = _machine(wide)
    with pytest.raises(grammar_stacks._OutOfWork):
        machine.search(MAX_LIVE_STACKS)
    assert machine.work <= grammar_stacks.SEARCH_WORK + 1
    assert find_blowup(wide) is None


def test_the_search_reads_a_grammar_as_llama_cpp_does_up_to_a_nul() -> None:
    """llama.cpp takes a C string: a later, harmless redefinition past a NUL is not what it runs."""
    assert find_blowup(WEDGE + '\n# \x00\na ::= "w"') is not None


def test_grammars_llama_cpp_refuses_are_left_to_its_own_error() -> None:
    assert find_blowup('root ::= root "x" | "y"') is None  # left recursion
    assert find_blowup('root ::= "x" undefined') is None
