"""The real engine's first event of a sequence says how much of its prompt came from the prefix cache, before any
text: what Anthropic's message_start reports (anthropic/render.py), split as the final usage is (issue #28)."""

from __future__ import annotations

from support.real_engine import GREEDY_NO_EOS, engine, request, run


def test_the_first_event_carries_the_cached_prompt_tokens_the_last_one_counts():
    prompt = "Name the planets of the solar system, from the sun outwards, with one fact about each."
    with engine() as eng:
        [cold] = run(eng, request(prompt, max_tokens=4, sampling=GREEDY_NO_EOS))
        [warm] = run(eng, request(prompt, max_tokens=4, sampling=GREEDY_NO_EOS))
    assert cold[0].cached_tokens == 0 and cold[-1].usage is not None and cold[-1].usage.cached_tokens == 0
    assert warm[-1].usage is not None and warm[-1].usage.cached_tokens > 0, "the second run reuses the prompt"
    assert warm[0].cached_tokens == warm[-1].usage.cached_tokens
    assert all(event.cached_tokens is None for event in warm[1:]), "the first event only"
