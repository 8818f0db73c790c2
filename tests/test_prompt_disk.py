"""The prompt cache's disk tier (server/engine/prompt_disk.py) with random bytes as states: no model needed."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nomoat.engine.prompt_disk import DiskTier

BUILD = "llama-cpp-python test; llama.cpp test"
LOGGER = "nomoat.engine.prompt_disk"
TOKENS = list(range(1000, 1400))


def state(n: int = 4096, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def tiers(tmp_path: Path) -> Iterator[Callable[..., DiskTier]]:
    made: list[DiskTier] = []

    def make(budget: int = 1 << 30, build: str = BUILD, **kw: int) -> DiskTier:
        tier = DiskTier(tmp_path / "prompt-cache", budget, build, **kw)
        made.append(tier)
        return tier

    yield make
    for tier in made:
        tier.close()


def saved(tier: DiskTier, *items: tuple[str, list[int], bytes]) -> DiskTier:
    """Save each item and wait until the writer has written them all."""
    before = tier.stats().saved
    for identity, tokens, data in items:
        tier.save(identity, tokens, data)
    wait_for(lambda: tier.stats().saved == before + len(items))
    return tier


def test_roundtrip_and_a_new_tier_finds_what_the_old_one_wrote(tiers: Callable[..., DiskTier]) -> None:
    data = state(50_000)
    tier = saved(tiers(), ("m1", TOKENS[:200], data))
    hit = tier.best("m1", TOKENS)
    assert hit is not None and (hit.n_tokens, hit.matched, hit.state_bytes) == (200, 200, len(data))
    assert tier.load(hit) == data
    tier.close()
    again = tiers()
    assert again.stats().entries == 1 and again.stats().bytes > len(data)
    hit = again.best("m1", TOKENS[:300])
    assert hit is not None and again.load(hit) == data
    stats = again.stats()
    assert (stats.hits, stats.misses) == (1, 0) and stats.read_seconds > 0


def test_the_longest_prefix_wins_and_a_short_one_is_no_hit(tiers: Callable[..., DiskTier]) -> None:
    branch = TOKENS[:150] + [7] * 150
    tier = saved(tiers(), ("m", TOKENS[:100], state(seed=1)), ("m", TOKENS[:200], state(seed=2)),
                 ("m", branch, state(seed=3)))
    hit = tier.best("m", TOKENS[:250])
    assert hit is not None and (hit.n_tokens, hit.matched) == (200, 200)
    assert tier.load(hit) == state(seed=2)
    assert tier.stats().entries == 2  # the 100 tokens' state is superseded by the 200's, which continues it
    saved(tier, ("m", TOKENS[:120], state(seed=4)))  # already covered: not written again
    assert tier.stats().entries == 2 and len(list(tier.root.iterdir())) == 2
    # A partial match: the state covers 300 tokens, 160 of them agree; the caller trims the rest.
    hit = tier.best("m", TOKENS[:150] + [7] * 10 + [9] * 5)
    assert hit is not None and (hit.n_tokens, hit.matched) == (300, 160)
    assert tier.best("m", TOKENS[:20] + [5] * 100) is None  # shares 20 tokens: below min_tokens
    assert tier.stats().misses == 1


def test_another_identity_never_matches(tiers: Callable[..., DiskTier], caplog: pytest.LogCaptureFixture) -> None:
    tier = saved(tiers(), ("model-a|adapters:x@1.0", TOKENS, state()))
    assert tier.best("model-a|adapters:y@1.0", TOKENS) is None
    assert tier.best("model-b", TOKENS) is None
    hit = tier.best("model-a|adapters:x@1.0", TOKENS)
    assert hit is not None
    forged = type(hit)("model-b", hit.path, hit.n_tokens, hit.matched, hit.state_bytes)
    with caplog.at_level(logging.WARNING, LOGGER):
        assert tier.load(forged) is None
    assert "another model" in caplog.text and not hit.path.exists()


def _flip_last_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_a_damaged_file_is_skipped_with_a_log_line_and_removed(
        tiers: Callable[..., DiskTier], caplog: pytest.LogCaptureFixture, damage: str) -> None:
    tier = saved(tiers(), ("m", TOKENS, state(20_000)))
    hit = tier.best("m", TOKENS)
    assert hit is not None
    if damage == "corrupt":
        _flip_last_byte(hit.path)
    else:
        os.truncate(hit.path, hit.path.stat().st_size - 100)
    with caplog.at_level(logging.WARNING, LOGGER):
        assert tier.load(hit) is None
    assert len(caplog.records) == 1
    assert ("checksum" if damage == "corrupt" else "truncated") in caplog.text
    assert not hit.path.exists() and tier.stats().entries == 0 and tier.stats().rejected == 1
    assert tier.best("m", TOKENS) is None


def test_at_startup_truncated_garbage_and_foreign_files_are_removed(
        tiers: Callable[..., DiskTier], caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    tier = saved(tiers(), ("m", TOKENS[:100], state(seed=1)), ("m", [1, *TOKENS[:300]], state(seed=2)))
    tier.close()
    root = tmp_path / "prompt-cache"
    first, second = sorted(root.iterdir(), key=lambda p: p.stat().st_size)
    os.truncate(second, 50)
    (root / "junk.state").write_bytes(b"not a state")
    (root / ".tmp-999999999-dead.state").write_bytes(b"half")  # left by a crashed writer
    with caplog.at_level(logging.INFO, LOGGER):
        survivor = tiers()
    assert sorted(p.name for p in root.iterdir()) == [first.name]
    assert survivor.stats().entries == 1 and caplog.text.count("skipped") == 2
    survivor.close()
    caplog.clear()
    with caplog.at_level(logging.INFO, LOGGER):
        other = tiers(build="llama-cpp-python other; llama.cpp other")
    assert other.stats().entries == 0 and list(root.iterdir()) == []
    assert "another llama.cpp build" in caplog.text


def test_the_budget_evicts_the_least_recently_used(tiers: Callable[..., DiskTier]) -> None:
    data = state(10_000)
    tier = tiers(budget=3 * 12_000)
    prompts = [[p, *TOKENS[:100]] for p in range(5)]
    saved(tier, *[("m", prompts[i], data) for i in range(3)])
    hit = tier.best("m", prompts[0])
    assert hit is not None and tier.load(hit) == data  # 0 is now the most recently used
    saved(tier, ("m", prompts[3], data), ("m", prompts[4], data))
    stats = tier.stats()
    assert stats.bytes <= 3 * 12_000 and stats.entries == 3 and stats.evicted == 2
    kept = {p[0] for p in prompts if tier.best("m", p) is not None}
    assert kept == {0, 3, 4}
    assert len(list((tier.root).iterdir())) == 3
    tier.save("m", prompts[1], state(40_000))  # alone past the budget: never queued
    assert tier.stats().dropped == 1


def test_a_full_queue_drops_saves_without_blocking(tiers: Callable[..., DiskTier]) -> None:
    tier = tiers(queue_size=1)
    writing, release = threading.Event(), threading.Event()
    write = tier._write

    def stalled(item: object) -> None:
        writing.set()
        release.wait(60)
        write(item)  # type: ignore[arg-type]

    tier._write = stalled  # type: ignore[method-assign]
    tier.save("m", [1, *TOKENS[:100]], state())
    assert writing.wait(60)  # the writer holds the first; the queue is empty again
    tier.save("m", [2, *TOKENS[:100]], state())  # queued
    for n in range(3, 6):
        tier.save("m", [n, *TOKENS[:100]], state())  # returns at once, dropped
    assert tier.stats().dropped == 3
    release.set()
    wait_for(lambda: tier.stats().saved == 2)
    tier.close()
    tier.save("m", [9, *TOKENS[:100]], state())  # closed: dropped
    assert tier.stats().dropped == 4
