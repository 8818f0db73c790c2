"""A bound on the grammar work one token may cost, so that no sequence's grammar can stall the step all share.

llama.cpp keeps one parse stack per way the output so far can be read, and its grammar calls cost
in proportion to them (a full-vocabulary filter checks every candidate against every stack). An
ambiguous grammar multiplies them with each token, and every sequence of the model waits for the
step it runs in. The grammars a request brings or nomoat builds are searched for such growth before
they are accepted (core/grammar_stacks.py); this guard stops what that bounded search may miss:
after each token, a sequence whose grammar keeps more than MAX_LIVE_STACKS stacks, or whose grammar
calls took more than TOKEN_BUDGET_SECONDS for that token, ends with GrammarTooCostly, and the
others go on.

The stack count is read from llama.cpp itself: `llama_grammar_get_stacks` is exported from
libllama (C++ linkage), and the grammar sampler's context is `llama_sampler_grammar` of
src/llama-sampler.cpp (vocab, grammar text, root name, grammar). The layout is checked against the
values nomoat passed in (the vocab pointer and both strings) before it is trusted; where it does
not match (another llama.cpp), only the time budget applies, and the log says so once.
"""

from __future__ import annotations

import ctypes
import logging
import time
from typing import Any

import llama_cpp

from .errors import InvalidInput

log = logging.getLogger(__name__)

# The most parse stacks a grammar may keep alive after a token. A legitimate grammar stays far
# below: the JSON-schema grammars in the test suite keep at most about 20, an enum of 256 values
# (the most alternatives a grammar may have) about 260; each stack costs about 3 ms of a
# full-vocabulary filter on a 2-core box. core/grammar_stacks.py refuses grammars past it up front.
MAX_LIVE_STACKS = 512
# The most time one sequence's grammar calls may take for one token: the backstop for any cost the
# stack count does not show (huge character classes, say). A JSON-schema grammar's full-vocabulary
# filter takes 10-50 ms here, an enum of 256 values ~0.7 s; every other sequence of the model waits
# for it, so past this the sequence ends.
TOKEN_BUDGET_SECONDS = 5.0

_VECTOR_SIZE = ctypes.sizeof(ctypes.c_void_p) * 3  # sizeof(std::vector<T>): begin, end, end of storage


class GrammarTooCostly(InvalidInput):
    """A grammar that costs too much per token at runtime: its sequence ends with this error (a 400)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, subject="grammar")


class _StdString(ctypes.Structure):  # libstdc++'s std::string (the C++11 ABI libllama is built with)
    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_size_t), ("local", ctypes.c_char * 16)]


class _SamplerGrammar(ctypes.Structure):  # llama-sampler.cpp's llama_sampler_grammar
    _fields_ = [("vocab", ctypes.c_void_p), ("grammar_str", _StdString), ("grammar_root", _StdString),
                ("grammar", ctypes.c_void_p)]


class _Sampler(ctypes.Structure):  # llama.h's llama_sampler
    _fields_ = [("iface", ctypes.c_void_p), ("ctx", ctypes.c_void_p)]


class _Vector(ctypes.Structure):
    _fields_ = [("begin", ctypes.c_size_t), ("end", ctypes.c_size_t), ("cap", ctypes.c_size_t)]


def _get_stacks_function() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        fn = llama_cpp.llama_cpp._lib._Z24llama_grammar_get_stacksP13llama_grammar
    except AttributeError:
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_void_p
    return fn


_get_stacks = _get_stacks_function()
_warned = False


def _address(pointer: Any) -> int:
    """A ctypes pointer or an int (llama_cpp returns both) as an address."""
    return pointer if isinstance(pointer, int) else ctypes.cast(pointer, ctypes.c_void_p).value or 0


def _stacks_address(sampler: Any, vocab: Any, text: bytes, root: bytes) -> int | None:
    """The address of the grammar's `stacks` vector, or None where the layout is not the one expected."""
    if _get_stacks is None or not _address(sampler):
        return None
    ctx = _Sampler.from_address(_address(sampler)).ctx
    if not ctx:
        return None
    fields = _SamplerGrammar.from_address(ctx)
    # libstdc++ keeps a short string (the root rule's name) in the string itself: its data pointer says the
    # layout is this one before any pointer read from it is followed (libc++, say, would not match).
    root_local = ctx + _SamplerGrammar.grammar_root.offset + _StdString.local.offset
    if (fields.vocab != _address(vocab) or len(root) >= _StdString.local.size or fields.grammar_root.data != root_local
            or not fields.grammar
            or fields.grammar_str.size != len(text) or fields.grammar_root.size != len(root)
            or ctypes.string_at(fields.grammar_str.data, len(text)) != text
            or ctypes.string_at(fields.grammar_root.data, len(root)) != root):
        return None
    address = _get_stacks(fields.grammar)
    vector = _Vector.from_address(address)
    if not address or vector.end < vector.begin or (vector.end - vector.begin) % _VECTOR_SIZE:
        return None
    return int(address)


class GrammarGuard:
    """Measures one sequence's grammar: its live stacks after each token and the time its calls took."""

    def __init__(self, sampler: Any, vocab: Any, text: bytes, root: bytes = b"root") -> None:
        global _warned
        # llama.cpp keeps the text up to its first NUL (it takes a C string).
        self._stacks = _stacks_address(sampler, vocab, text.split(b"\0", 1)[0], root)
        if self._stacks is None and not _warned:
            _warned = True
            log.warning("cannot read llama.cpp's grammar stacks in this build; grammars are bounded by time only")

    def live_stacks(self) -> int | None:
        """How many parses the grammar keeps alive now (None: not readable in this build)."""
        if self._stacks is None:
            return None
        vector = _Vector.from_address(self._stacks)
        live: int = (vector.end - vector.begin) // _VECTOR_SIZE
        return live

    def check(self, started: float) -> None:
        """Raise GrammarTooCostly past either bound; `started` is when this token's grammar work began."""
        live = self.live_stacks()
        if live is not None and live > MAX_LIVE_STACKS:
            raise GrammarTooCostly(
                f"the grammar keeps {live} parses alive at once, more than the limit of {MAX_LIVE_STACKS} "
                "(it is ambiguous: each parse costs time on every token of every request on this model); "
                "the generation was ended")
        elapsed = time.perf_counter() - started
        if elapsed > TOKEN_BUDGET_SECONDS:
            raise GrammarTooCostly(
                f"the grammar took {elapsed:.1f} s for one token, more than the limit of {TOKEN_BUDGET_SECONDS:g} s "
                "(every request on this model waits for it); the generation was ended")
