"""The engine's runtime bound on grammar work (server/engine/grammar_guard.py), with the real model in process:
a sequence whose grammar keeps too many parses alive, or takes too long for a token, ends with a 400-class
error of its own while the sequences beside it finish; the bounds are lowered here so the test is
deterministic (no wall clock), the ambiguous grammar goes straight to the engine (past the static check)."""

from __future__ import annotations

import logging
import threading

import pytest
from support.real_engine import GREEDY_NO_EOS, engine, request, run, spec, text, tokens
from test_grammar_stacks import WEDGE
from wire import tokenize, wait_until

from nomoat.engine import grammar_guard
from nomoat.engine.engine import Engine
from nomoat.engine.grammar_guard import GrammarTooCostly
from nomoat.engine.model import LoadedModel
from nomoat.engine.types import SamplingParams

X = tokenize("x")[0]


def _wedge(max_tokens: int = 30) -> object:
    """The issue's request: the ambiguous grammar with `x` pushed to the top, so each token doubles the stacks."""
    return request("hi", max_tokens=max_tokens,
                   sampling=SamplingParams(temperature=0.0, grammar=WEDGE, logit_bias={X: 100.0}))


def test_a_sequence_past_the_stack_bound_ends_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grammar_guard, "MAX_LIVE_STACKS", 16)
    with engine() as eng:
        wedged, ordinary = run(eng, _wedge(), request("Write a poem about the sea.", 12, sampling=GREEDY_NO_EOS))
    error = wedged[-1].error
    assert isinstance(error, GrammarTooCostly), wedged[-1]
    # 3 stacks, then 6, 12, 24: the third x crosses 16 and ends the sequence before its token is sent.
    assert "".join(e.text for e in wedged) == "xx"
    assert "keeps 24 parses alive" in error.message and "limit of 16" in error.message
    assert len(tokens(ordinary)) == 12 and text(ordinary)


def test_a_sequence_past_the_time_budget_ends_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grammar_guard, "TOKEN_BUDGET_SECONDS", 0.0)  # any grammar work at all is past it
    constrained = request("Say yes or no.", 8, sampling=SamplingParams(temperature=0.0, grammar='root ::= "yes" | "no"'))
    with engine() as eng:
        ended, ordinary = run(eng, constrained, request("Write a poem about the sea.", 12, sampling=GREEDY_NO_EOS))
    assert isinstance(ended[-1].error, GrammarTooCostly) and "s for one token" in ended[-1].error.message
    assert len(tokens(ordinary)) == 12 and text(ordinary)


def test_the_same_wedge_is_cut_at_the_default_bound() -> None:
    """No lowered bound: 3 * 2**8 = 768 stacks after the 8th x, past 512."""
    with engine() as eng:
        (wedged,) = run(eng, _wedge())
    assert isinstance(wedged[-1].error, GrammarTooCostly)
    assert "".join(e.text for e in wedged) == "x" * 7


def test_close_gives_up_on_a_worker_stuck_in_a_call_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """A worker inside a call that does not return (here a job on its thread) neither blocks close() past its
    timeout nor is its model freed under it; once the call returns, close() finishes the job."""
    eng = Engine(LoadedModel(spec()), queue_size=8)
    release = threading.Event()
    job = eng.call(release.wait)
    assert wait_until(job.running, timeout=60)
    with caplog.at_level(logging.ERROR, logger="nomoat.engine"):
        eng.close(timeout=0.05)
    assert "still inside a llama.cpp call" in caplog.text
    assert eng.model.model, "the model was freed under a running worker"
    release.set()
    eng.close()
    assert not eng.model.model
