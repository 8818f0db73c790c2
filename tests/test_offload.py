"""n_gpu_layers = "auto" (engine/offload.py): the pure fit; several models planning on one fake GPU, with and
without gpu_memory_budget (fake engines, residency/footprint.py's gpu_device patched); a CPU-only build saying
where the model runs."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest
from support.fake_engine import FakeEngine
from support.inprocess import fake_registry
from support.process import ServerProcess
from wire import MODEL, post_ok

from nomoat.config import ModelConfig, ModelsFile, embedded_model_path
from nomoat.engine.offload import MARGIN, GpuDevice, GpuRoom, fit_layers, gpu_device
from nomoat.errors import ConfigError
from nomoat.registry import ModelRegistry
from nomoat.residency import footprint as footprint_module
from nomoat.residency.footprint import estimate
from nomoat.settings import Settings

MIB = 1024 * 1024
GIB = 1024 * MIB
PATH = str(embedded_model_path())
# The embedded model with every layer on the GPU: what it holds there (weights and KV) and its compute buffer.
FULL = estimate(ModelConfig(name="x", path=PATH, n_gpu_layers=-1))
HELD, COMPUTE = FULL.gpu(), FULL.compute_per_context


def test_no_gpu_backend_means_the_cpu() -> None:
    assert fit_layers("auto", 30, 10 * MIB, 100 * MIB, None) == 0


def test_every_layer_that_fits_goes_to_the_gpu() -> None:
    roomy = GpuDevice("H100", 80 * GIB)
    assert fit_layers("auto", 30, 10 * MIB, 100 * MIB, roomy) == -1


def test_a_partial_fit_keeps_the_margin() -> None:
    # 1 GiB margin + 100 MiB compute buffer + 7 layers of 100 MiB = 1824 MiB; 1900 MiB free leaves 76: 7 layers.
    device = GpuDevice("small", MARGIN + 100 * MIB + 7 * 100 * MIB + 76 * MIB)
    assert fit_layers("auto", 30, 100 * MIB, 100 * MIB, device) == 7
    assert fit_layers("auto", 30, 100 * MIB, 100 * MIB, GpuDevice("full", MARGIN // 2)) == 0


def test_a_gpu_memory_budget_smaller_than_free_memory_caps_auto() -> None:
    # 80 GiB free, but the budget leaves 1 GiB: less the 100 MiB compute buffer, 9 layers of 100 MiB.
    assert fit_layers("auto", 30, 100 * MIB, 100 * MIB, GpuDevice("H100", 80 * GIB), others=GpuRoom(budget_left=GIB)) == 9
    # A budget larger than the free memory: the device decides.
    small = GpuDevice("small", MARGIN + 100 * MIB + 5 * 100 * MIB)
    assert fit_layers("auto", 30, 100 * MIB, 100 * MIB, small, others=GpuRoom(budget_left=80 * GIB)) == 5
    # A load under way has reserved 300 MiB that the device does not show yet: 3 layers fewer.
    assert fit_layers("auto", 30, 100 * MIB, 100 * MIB, small, others=GpuRoom(pending=300 * MIB)) == 2


class FakeGpu:
    """One GPU of `capacity` bytes, free memory as models open on it (what a fake engine "allocates")."""

    def __init__(self, capacity: int, gated: str = "") -> None:
        self.capacity = capacity
        self.held: dict[str, int] = {}
        self.placed: list[tuple[str, int]] = []  # (model, n_gpu_layers) as each load got it
        self.gated = gated  # this model's open waits for `gate`: reserved, nothing on the device yet
        self.gate = threading.Event()
        self.opening = threading.Event()
        self.probes = 0
        self.probed_twice = threading.Event()  # two plans made

    def device(self) -> GpuDevice:
        self.probes += 1
        if self.probes >= 2:
            self.probed_twice.set()
        return GpuDevice("Fake GPU", self.capacity - sum(self.held.values()))

    def open(self, config: ModelConfig) -> FakeEngine:
        assert isinstance(config.n_gpu_layers, int), "the load gets the number its footprint was planned with"
        self.placed.append((config.name, config.n_gpu_layers))
        if config.name == self.gated:
            self.opening.set()
            assert self.gate.wait(30)
        placed = estimate(config)
        self.held[config.name] = placed.gpu() + placed.gpu_compute
        return FakeEngine(config.name)


def two_models(gpu: FakeGpu, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> ModelRegistry:
    monkeypatch.setattr(footprint_module, "gpu_device", gpu.device)
    models = ModelsFile(models=[ModelConfig(name=n, path=PATH) for n in ("a", "b")])
    return fake_registry(Settings(**settings), monkeypatch, models, gpu.open)


async def use(registry: ModelRegistry, name: str) -> None:
    (await registry.resolve(name)).lease.release()


def test_two_models_share_the_gpu_budget_and_a_model_loaded_again_plans_again(monkeypatch) -> None:
    # Room for one model and half of another under the budget (the compute buffer is outside it, but each plan
    # keeps its own out of the room); the card itself has 80 GiB free.
    budget = HELD + HELD // 2 + COMPUTE
    gpu = FakeGpu(80 * GIB)
    registry = two_models(gpu, monkeypatch, gpu_memory_budget=budget)

    async def scenario() -> None:
        await use(registry, "a")
        await use(registry, "b")
        residents = registry.residency.residents
        assert residents["a"].memory("gpu") + residents["b"].memory("gpu") <= budget
        for name in ("a", "b"):
            assert await registry.residency.unload(name)
        await use(registry, "b")  # alone now: the decision made beside "a" does not outlive it

    asyncio.run(scenario())
    (a, a_layers), (b, b_layers), (again, again_layers) = gpu.placed
    assert (a, a_layers) == ("a", -1) and b == "b" and 0 < b_layers < 30 and (again, again_layers) == ("b", -1)
    registry.close()


def test_a_load_waiting_for_room_plans_again_once_the_other_model_is_gone(monkeypatch, caplog) -> None:
    gpu = FakeGpu(80 * GIB)
    registry = two_models(gpu, monkeypatch, gpu_memory_budget=HELD + HELD // 2 + COMPUTE, max_loaded_models=1)

    async def scenario() -> None:
        held = await registry.resolve("a")
        waiting = asyncio.ensure_future(use(registry, "b"))  # planned beside "a", then waits for it to go idle
        assert await asyncio.to_thread(gpu.probed_twice.wait, 30)
        held.lease.release()  # "a" is evicted: "b" has the budget to itself
        await waiting

    with caplog.at_level("INFO", logger="nomoat.residency.footprint"):
        asyncio.run(scenario())
    assert gpu.placed == [("a", -1), ("b", -1)]
    plans = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model b:")]
    assert "model b: 30 of 30" not in plans[0] and "model b: 30 of 30" in plans[-1], plans
    registry.close()


def test_a_load_under_way_is_not_counted_free_twice(monkeypatch) -> None:
    # No budget: each plan reads the device. "a" has reserved its room and is opening, nothing on the device yet;
    # "b" plans meanwhile and must leave "a"'s share alone, though the device still shows it free.
    gpu = FakeGpu(MARGIN + (HELD + COMPUTE) + (HELD // 2 + COMPUTE), gated="a")
    registry = two_models(gpu, monkeypatch)

    async def scenario() -> None:
        first = asyncio.ensure_future(use(registry, "a"))
        assert await asyncio.to_thread(gpu.opening.wait, 30)
        await use(registry, "b")
        gpu.gate.set()
        await first

    asyncio.run(scenario())
    placed = dict(gpu.placed)
    assert placed["a"] == -1 and 0 < placed["b"] < 30, placed
    assert sum(gpu.held.values()) <= gpu.capacity - MARGIN
    registry.close()


def test_an_integer_passes_through() -> None:
    for given in (0, 12, -1):
        assert fit_layers(given, 30, 10 * MIB, 0, None) == given
        assert fit_layers(given, 30, 10 * MIB, 0, GpuDevice("H100", 80 * GIB)) == given


def test_a_bad_layer_count_is_a_config_error() -> None:
    from nomoat.config import models_for_single_file
    from nomoat.settings import Settings

    try:
        models_for_single_file(Settings(model="embedded:smollm2-135m", n_gpu_layers="lots"))
    except ConfigError as exc:
        assert "n_gpu_layers" in str(exc)
    else:
        raise AssertionError("n_gpu_layers='lots' was accepted")


def test_a_cpu_build_says_the_default_runs_on_the_cpu_and_serves(server: ServerProcess, client: httpx.Client) -> None:
    if gpu_device() is not None:
        pytest.skip("a GPU build: test_a_gpu_build_offloads_every_layer_by_default covers it")
    post_ok(client, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                                              "max_tokens": 2})
    log = server.log()
    assert "model smollm2-135m runs on the CPU (n_gpu_layers auto: no GPU backend in this build" in log
    assert "gpu_layers=0)" in log


@pytest.mark.gpu
def test_a_gpu_build_offloads_every_layer_by_default(server: ServerProcess, client: httpx.Client) -> None:
    """The default n_gpu_layers ("auto") on a GPU build: the whole model on the GPU, and the log says so
    (bench/gpu_check.sh runs this on a GPU machine)."""
    device = gpu_device()
    if device is None:
        pytest.skip("no GPU backend in this build of llama.cpp (bench/gpu_check.sh builds one)")
    assert estimate(ModelConfig(name="x", path=PATH)).gpu_layers == -1, f"the embedded model fits {device.name}"
    post_ok(client, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                                              "max_tokens": 2})
    log = server.log()
    assert f"model smollm2-135m: 30 of 30 layers on {device.name}" in log
    assert "gpu_layers=-1)" in log
