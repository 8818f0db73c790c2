"""Metrics under vLLM's names, so an inference gateway routes to nomoat replicas by load and adapter unchanged.

The Kubernetes Gateway API Inference Extension (and llm-d, which builds on it) scrapes each replica's
`/metrics` for `vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc` and
`vllm:lora_requests_info`, and picks a replica by queue, KV pressure and which adapters it is running.
The semantics follow vLLM's own (vllm/v1/metrics/loggers.py); docs/scale-out.md shows the configuration.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .engine.generation import Occupancy


class GatewayCollector(Collector):
    """Reads every loaded engine's occupancy at scrape time."""

    def __init__(self, engines: Callable[[], Mapping[str, Any]]) -> None:
        self._engines = engines

    def collect(self) -> Iterable[Metric]:
        loads: dict[str, Occupancy] = {name: engine.occupancy() for name, engine in self._engines().items()}
        labels = ["model_name", "engine"]
        running = GaugeMetricFamily("vllm:num_requests_running", "Number of requests in model execution batches.",
                                    labels=labels)
        waiting = GaugeMetricFamily("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                                    labels=labels)
        kv = GaugeMetricFamily("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                               labels=labels)
        for name, load in loads.items():
            running.add_metric([name, "0"], load.running)
            waiting.add_metric([name, "0"], load.waiting)
            kv.add_metric([name, "0"], load.kv_used / load.kv_cells if load.kv_cells else 0.0)
        yield from (running, waiting, kv)
        # One sample whose value is the time it was taken, as vLLM's set_to_current_time(): a gateway
        # reads the adapters off the labels of the newest sample. Adapters are named across every model.
        info = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on lora requests.",
                                 labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"])
        max_lora = max((load.max_adapter_sets for load in loads.values()), default=0)
        running_names = sorted(set().union(*(load.running_adapters for load in loads.values())))
        waiting_names = sorted(set().union(*(load.waiting_adapters for load in loads.values())))
        info.add_metric([str(max_lora), ",".join(waiting_names), ",".join(running_names)], time.time())
        yield info
