"""EventLoopMonitor: a loop blocked by synchronous work shows up in nomoat_event_loop_lag_seconds."""

from __future__ import annotations

import asyncio
import contextlib
import time

from nomoat.metrics import EventLoopMonitor, Metrics

BLOCK_SECONDS = 0.6


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_blocked_loop_is_recorded_as_lag_and_the_monitor_stops_when_cancelled():
    metrics = Metrics()

    async def scenario() -> None:
        monitor = asyncio.create_task(EventLoopMonitor(metrics, interval=0.01).run())
        deadline = time.monotonic() + 30
        while sample(metrics, "nomoat_event_loop_lag_seconds_count") < 1:  # the monitor is sleeping now
            assert time.monotonic() < deadline, "the monitor recorded nothing"
            await asyncio.sleep(0.01)
        before = sample(metrics, "nomoat_event_loop_lag_seconds_count")
        time.sleep(BLOCK_SECONDS)  # noqa: ASYNC251  blocks the loop on purpose: the monitor's sleep ends late by about this much
        while sample(metrics, "nomoat_event_loop_lag_seconds_count") <= before:
            assert time.monotonic() < deadline, "the monitor recorded nothing after the block"
            await asyncio.sleep(0.01)
        slow = (sample(metrics, "nomoat_event_loop_lag_seconds_count")
                - sample(metrics, "nomoat_event_loop_lag_seconds_bucket", le="0.5"))
        assert slow >= 1  # the monitor slept 0.01 s and woke at least 0.59 s late
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
        assert monitor.cancelled()

    asyncio.run(asyncio.wait_for(scenario(), 60))
