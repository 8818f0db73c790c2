"""Prometheus metrics: one registry per app, named in the Prometheus convention (nomoat_ prefix, units, _total)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .engine.prompt_disk import DiskStats
from .gateway_metrics import GatewayCollector

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TOKEN_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
_LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every metric the server exports. Built once per process and passed down; no global state.

    `adapter` labels hold the adapter names a request used, comma-joined, "" for the base model.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "nomoat_requests_total", "HTTP requests by model, adapter, endpoint and status.",
            ["model", "adapter", "endpoint", "status"], registry=r,
        )
        self.prompt_tokens = Counter(
            "nomoat_prompt_tokens_total", "Prompt tokens of finished requests, cached ones included.",
            ["model", "adapter"], registry=r,
        )
        self.cached_prompt_tokens = Counter(
            "nomoat_prompt_cached_tokens_total", "Prompt tokens reused from the cache instead of evaluated.",
            ["model", "adapter"], registry=r,
        )
        self.completion_tokens = Counter(
            "nomoat_completion_tokens_total", "Tokens generated.", ["model", "adapter"], registry=r
        )
        self.time_to_first_token = Histogram(
            "nomoat_time_to_first_token_seconds", "From request admission to the first generated token.",
            ["model", "adapter"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.inter_token_latency = Histogram(
            "nomoat_inter_token_latency_seconds", "Gap between consecutive tokens of one generation.",
            ["model", "adapter"], buckets=_TOKEN_GAP_BUCKETS, registry=r,
        )
        self.request_duration = Histogram(
            "nomoat_request_duration_seconds", "From request start to the last byte sent.",
            ["model", "adapter", "endpoint"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.in_flight = Gauge("nomoat_requests_in_flight", "HTTP requests being served.", registry=r)
        self.model_load = Histogram(
            "nomoat_model_load_seconds", "Time to load a model; its _count is the number of loads.",
            ["model"], buckets=_LOAD_BUCKETS, registry=r,
        )
        self.adapter_load = Histogram(
            "nomoat_adapter_load_seconds", "Time to load a LoRA adapter; its _count is the number of loads.",
            ["model", "adapter"], buckets=_LOAD_BUCKETS, registry=r,
        )
        self.evictions = Counter(
            "nomoat_model_evictions_total", "Idle models unloaded to make room for another under the memory budget.",
            ["model"], registry=r,
        )
        self.memory_budget = Gauge(
            "nomoat_memory_budget_bytes", "Memory the loaded models may use together (memory_budget).", registry=r,
        )
        self.reloads = Counter(
            "nomoat_config_reloads_total", "Configuration reloads (SIGHUP or POST /admin/reload) by result.",
            ["result"], registry=r,
        )
        self.event_loop_lag = Histogram(
            "nomoat_event_loop_lag_seconds",
            "How late the event loop woke from a short sleep: time it was kept busy by something blocking it.",
            buckets=_LAG_BUCKETS, registry=r,
        )
        # Tokens generated lately, for GET /status's tokens/s (Prometheus has rate() for the counters).
        self.recent_tokens = TokenRate()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def watch_engines(self, engines: Callable[[], Mapping[str, Any]],
                      prompt_disk: Callable[[], DiskStats | None] = lambda: None) -> None:
        """Export queue depth, active sequences and loaded models, read from the engines at scrape time, under
        nomoat's names and under the vLLM names inference gateways route by (gateway_metrics.py); and the
        server's prompt-cache disk tier, when it has one."""
        self.registry.register(_EngineCollector(engines, prompt_disk))
        self.registry.register(GatewayCollector(engines))

    def watch_memory(self, estimates: Callable[[], Mapping[str, int]]) -> None:
        """Export each loaded model's estimated memory, read at scrape time."""
        self.registry.register(_MemoryCollector(estimates))

    def timer(self, model: str, adapter: str) -> GenerationTimer:
        return GenerationTimer(self, model, adapter)


class TokenRate:
    """Generated tokens lately, for GET /status, each finished run with the seconds it spent generating them
    (its first token to its last), so a rate is over the time tokens were being made, as a client measures its
    own answer, never over idle wall time (30 s of wall time put 1.5 tok/s beside an answer at 55.8).

    `last` is the last run's own rate; `per_second()` is every run's tokens in the window over the time any of
    them was generating (the union of their spans, so concurrent runs add up). Bounded: runs older than the
    window are dropped, and at most `keep` are held.
    """

    def __init__(self, window: int = 30, clock: Callable[[], float] = time.monotonic, keep: int = 4096) -> None:
        self.window = window
        self._clock = clock
        self._runs: collections.deque[tuple[float, float, int]] = collections.deque(maxlen=keep)  # start, end, tokens
        self.total = 0
        self.last: float | None = None

    def add(self, tokens: int, seconds: float = 0.0) -> None:
        """A finished run's `tokens`, the first of them `seconds` ago; the first token's own time is not in the
        span, so a rate counts the tokens after it (as the page's tok/s beside an answer does)."""
        end = self._clock()
        self.total += tokens
        if tokens > 1 and end - seconds < end:  # a span the clock can tell from an instant
            self._runs.append((end - seconds, end, tokens - 1))
            self.last = (tokens - 1) / seconds
        self._prune(end)

    def generating_seconds(self) -> float:
        """The seconds within the window in which some run was generating."""
        busy, reached = 0.0, float("-inf")
        for start, end, _ in self._recent():
            start = max(start, reached)
            if end > start:
                busy += end - start
            reached = max(reached, end)
        return busy

    def per_second(self) -> float:
        """Tokens a second within the window, over the time some run was generating."""
        busy = self.generating_seconds()
        return sum(n for _, _, n in self._recent()) / busy if busy else 0.0

    def _recent(self) -> list[tuple[float, float, float]]:
        """The runs within the window, by start; a run that began before it keeps the share of its tokens
        made inside it (as if made at an even pace), so a long answer does not count its whole span."""
        now = self._clock()
        self._prune(now)
        since = now - self.window
        return sorted((max(start, since), end, tokens * min(1.0, (end - since) / (end - start)))
                      for start, end, tokens in self._runs)

    def _prune(self, now: float) -> None:
        while self._runs and self._runs[0][1] <= now - self.window:
            self._runs.popleft()


class EventLoopMonitor:
    """Records the event loop's lag: it sleeps `interval` seconds, again and again, and measures how late it woke.

    Every stream of every model shares the loop, so a lag here (a lock, a slow call) stalls them all.
    Run `run()` as a task for the app's life; cancelling the task stops it.
    """

    def __init__(self, metrics: Metrics, interval: float = 0.1) -> None:
        self.interval = interval
        self._lag = metrics.event_loop_lag

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.interval)
            self._lag.observe(max(0.0, loop.time() - started - self.interval))


class GenerationTimer:
    """Time to first token and inter-token gaps of one request's generations (choices by index)."""

    def __init__(self, metrics: Metrics, model: str, adapter: str) -> None:
        self.started = time.perf_counter()
        self.ttft: float | None = None  # seconds from admission to the first token
        self._ttft_metric = metrics.time_to_first_token.labels(model, adapter)
        self._gap_metric = metrics.inter_token_latency.labels(model, adapter)
        self._last: dict[int, float] = {}

    def generating(self) -> float:
        """Seconds since the first token (0 before it): the time this run has been generating."""
        return 0.0 if self.ttft is None else time.perf_counter() - self.started - self.ttft

    def token(self, index: int) -> None:
        now = time.perf_counter()
        last = self._last.get(index)
        if last is not None:
            self._gap_metric.observe(now - last)
        elif self.ttft is None:
            self.ttft = now - self.started
            self._ttft_metric.observe(self.ttft)
        self._last[index] = now


class _EngineCollector(Collector):
    def __init__(self, engines: Callable[[], Mapping[str, Any]], prompt_disk: Callable[[], DiskStats | None]) -> None:
        self._engines = engines
        self._prompt_disk = prompt_disk

    def collect(self) -> Iterable[Metric]:
        waiting = GaugeMetricFamily("nomoat_queue_depth", "Requests admitted and waiting for a sequence slot.", labels=["model"])
        active = GaugeMetricFamily("nomoat_active_sequences", "Sequences being evaluated.", labels=["model"])
        batch = GaugeMetricFamily(
            "nomoat_batch_size", "Sequences the engine's last step advanced (all its llama_decode calls).", labels=["model"]
        )
        batch_tokens = GaugeMetricFamily(
            "nomoat_batch_tokens", "Tokens the engine's last step evaluated, prompt chunks included.", labels=["model"]
        )
        contexts = GaugeMetricFamily(
            "nomoat_engine_contexts", "llama.cpp contexts open (one per concurrently running adapter set).", labels=["model"]
        )
        engines = self._engines()
        for name, engine in engines.items():
            stats = engine.stats
            waiting.add_metric([name], engine.waiting)
            active.add_metric([name], engine.active)
            batch.add_metric([name], stats.last_batch_sequences)
            batch_tokens.add_metric([name], stats.last_batch_tokens)
            contexts.add_metric([name], stats.contexts)
        yield from (waiting, active, batch, batch_tokens, contexts)
        counters = {
            "decode_calls": ("nomoat_decode_calls_total", "llama_decode calls (one per adapter group per step)."),
            "decoded_tokens": ("nomoat_decoded_tokens_total", "Tokens evaluated by llama_decode (prompt and generated)."),
            "adapter_switches": ("nomoat_adapter_switches_total", "Changes of a context's LoRA adapter set."),
            "steps": ("nomoat_engine_steps_total", "Engine steps; decoded_tokens / steps is the mean batch."),
            "prompt_tokens": ("nomoat_engine_prompt_tokens_total", "Prompt tokens of sequences started."),
            "cached_tokens": ("nomoat_prefix_cache_tokens_total", "Prompt tokens served from the prefix cache."),
            "prefix_copies": (
                "nomoat_prefix_cache_copies_total", "Prefixes copied from another sequence slot (llama_memory_seq_cp)."
            ),
            "drafted_tokens": ("nomoat_speculative_drafted_tokens_total", "Speculative draft tokens verified."),
            "accepted_tokens": (
                "nomoat_speculative_accepted_tokens_total", "Speculative draft tokens accepted (generated without a step)."
            ),
            "prompt_cache_hits": ("nomoat_prompt_cache_hits_total", "Sequences started from a restored prompt cache state."),
            "prompt_cache_misses": (
                "nomoat_prompt_cache_misses_total", "Sequences whose prompt no cached state offered more of than the slot."
            ),
            "prompt_cache_saves": ("nomoat_prompt_cache_saves_total", "Slot states saved when another prompt took the slot."),
            "prompt_cache_restored_tokens": (
                "nomoat_prompt_cache_restored_tokens_total", "Prompt tokens restored from the prompt cache."
            ),
            "prompt_cache_save_seconds": (
                "nomoat_prompt_cache_save_seconds_total", "Seconds the engine thread spent saving slot states."
            ),
            "prompt_cache_restore_seconds": (
                "nomoat_prompt_cache_restore_seconds_total", "Seconds the engine thread spent restoring slot states."
            ),
        }
        for attr, (name, doc) in counters.items():
            family = CounterMetricFamily(name, doc, labels=["model"])
            for model, engine in self._engines().items():
                family.add_metric([model], getattr(engine.stats, attr))
            yield family
        cache_bytes = GaugeMetricFamily("nomoat_prompt_cache_bytes", "Bytes of KV states the prompt cache holds.",
                                        labels=["model", "tier"])
        cache_entries = GaugeMetricFamily("nomoat_prompt_cache_entries", "KV states the prompt cache holds.",
                                          labels=["model", "tier"])
        for model, engine in engines.items():
            for tier, size in prompt_cache_sizes(engine).items():
                cache_bytes.add_metric([model, tier], size)
            if getattr(engine, "prompt_cache", None) is not None:
                cache_entries.add_metric([model, "ram"], len(engine.prompt_cache))
        disk = self._prompt_disk()
        if disk is not None:
            # One disk tier serves every model and outlives their unloads: its series has model="".
            cache_bytes.add_metric(["", "disk"], disk.bytes)
            cache_entries.add_metric(["", "disk"], disk.entries)
        yield cache_bytes
        yield cache_entries
        yield GaugeMetricFamily("nomoat_models_loaded", "Models loaded and served.", value=len(engines))


def prompt_cache_sizes(engine: Any) -> dict[str, int]:
    """Bytes each tier of an engine's prompt cache holds ({} when it has none): for metrics, ps and the page."""
    cache = getattr(engine, "prompt_cache", None)
    return {} if cache is None else {"ram": cache.bytes}


class _MemoryCollector(Collector):
    def __init__(self, estimates: Callable[[], Mapping[str, int]]) -> None:
        self._estimates = estimates

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("nomoat_model_memory_estimate_bytes",
                                   "Estimated memory of each loaded model (weights, KV cache, compute buffers).",
                                   labels=["model"])
        for model, size in self._estimates().items():
            family.add_metric([model], size)
        yield family
