"""Prometheus metrics: one registry per app, named in the Prometheus convention (nomoat_ prefix)."""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """Every metric the server exports. Built once per app and passed down; no global state."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "nomoat_requests_total", "HTTP requests by model, endpoint and status.",
            ["model", "endpoint", "status"], registry=r,
        )
        self.prompt_tokens = Counter(
            "nomoat_prompt_tokens_total", "Prompt tokens evaluated or reused.", ["model"], registry=r
        )
        self.cached_prompt_tokens = Counter(
            "nomoat_prompt_cached_tokens_total", "Prompt tokens whose KV was reused (prefix cache hits).",
            ["model"], registry=r,
        )
        self.completion_tokens = Counter(
            "nomoat_completion_tokens_total", "Tokens generated.", ["model"], registry=r
        )
        self.time_to_first_token = Histogram(
            "nomoat_time_to_first_token_seconds", "From request admission to the first generated token.",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.request_duration = Histogram(
            "nomoat_request_duration_seconds", "From request start to the last byte sent.",
            ["model", "endpoint"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.in_flight = Gauge("nomoat_requests_in_flight", "HTTP requests being served.", registry=r)

    def watch_engines(self, engines: Callable[[], dict[str, object]]) -> None:
        """Export queue depth and active sequences, read from the engines at scrape time."""
        self.registry.register(_EngineCollector(engines))


class _EngineCollector(Collector):
    def __init__(self, engines: Callable[[], dict[str, object]]) -> None:
        self._engines = engines

    def collect(self) -> Iterable[GaugeMetricFamily]:
        waiting = GaugeMetricFamily("nomoat_queue_depth", "Requests admitted and waiting for a sequence slot.", labels=["model"])
        active = GaugeMetricFamily("nomoat_active_sequences", "Sequences being evaluated.", labels=["model"])
        for name, engine in self._engines().items():
            waiting.add_metric([name], engine.waiting)  # type: ignore[attr-defined]
            active.add_metric([name], engine.active)  # type: ignore[attr-defined]
        yield waiting
        yield active
        counters = {
            "decode_calls": ("nomoat_decode_calls_total", "llama_decode calls (one per adapter group per step)."),
            "decoded_tokens": ("nomoat_decoded_tokens_total", "Tokens evaluated by llama_decode (prompt and generated)."),
            "adapter_switches": ("nomoat_adapter_switches_total", "Changes of the context's LoRA adapter set."),
            "prompt_tokens": ("nomoat_engine_prompt_tokens_total", "Prompt tokens of sequences started."),
            "cached_tokens": ("nomoat_prefix_cache_tokens_total", "Prompt tokens served from the prefix cache."),
        }
        for attr, (name, doc) in counters.items():
            family = CounterMetricFamily(name, doc, labels=["model"])
            for model, engine in self._engines().items():
                family.add_metric([model], getattr(engine.stats, attr))  # type: ignore[attr-defined]
            yield family
