"""Prompt chunks beside running streams are sized from the measured step rate, so a stream's gap stays short."""

from __future__ import annotations

from nomoat.engine.batching import (
    MIN_PREFILL_CHUNK,
    PREFILL_CHUNK_WHILE_DECODING,
    PREFILL_STEP_SECONDS,
    PrefillPacer,
)


def test_the_chunk_follows_the_measured_rate():
    pacer = PrefillPacer()
    assert pacer.chunk() == PREFILL_CHUNK_WHILE_DECODING  # nothing measured yet
    pacer.record(4, 0.04)  # a decode-only step says little about prompt speed
    assert pacer.chunk() == PREFILL_CHUNK_WHILE_DECODING
    pacer.record(128, 0.75)  # a slow CPU: ~170 tokens/s
    assert pacer.chunk() == int(128 / 0.75 * PREFILL_STEP_SECONDS)
    for _ in range(20):
        pacer.record(512, 0.1)  # a fast one: 5120 tokens/s
    assert abs(pacer.chunk() - 5120 * PREFILL_STEP_SECONDS) < 10
    for _ in range(20):
        pacer.record(16, 10.0)  # stalled: the chunk never goes below the floor
    assert pacer.chunk() == MIN_PREFILL_CHUNK
