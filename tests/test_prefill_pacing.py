"""Prompt chunks beside running streams are sized from what steps cost, so a stream's gap stays short."""

from __future__ import annotations

from nomoat.engine.batching import (
    MIN_PREFILL_CHUNK,
    PREFILL_CHUNK_WHILE_DECODING,
    PREFILL_STEP_SECONDS,
    PrefillPacer,
)


def test_the_chunk_fills_the_step_target_after_the_streams_own_cost():
    pacer = PrefillPacer()
    assert pacer.chunk() == PREFILL_CHUNK_WHILE_DECODING  # nothing measured yet
    pacer.record(0, 0.01)  # streams alone: 10 ms a step
    assert pacer.chunk() == PREFILL_CHUNK_WHILE_DECODING
    pacer.record(128, 0.01 + 128 / 170)  # a 2-core CPU: 170 prompt tokens/s
    assert pacer.chunk() == int(170 * (PREFILL_STEP_SECONDS - 0.01))


def test_the_chunk_grows_on_a_fast_machine_and_keeps_a_floor_on_a_stalled_one():
    pacer = PrefillPacer()
    for _ in range(30):
        pacer.record(0, 0.002)
        pacer.record(512, 0.002 + 512 / 5000)
    assert abs(pacer.chunk() - 5000 * (PREFILL_STEP_SECONDS - 0.002)) < 5
    for _ in range(30):
        pacer.record(0, 1.0)  # a step alone takes longer than the target: only the floor is left
        pacer.record(32, 1.5)
    assert pacer.chunk() == MIN_PREFILL_CHUNK
