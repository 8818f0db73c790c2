"""n_gpu_layers = "auto" (engine/offload.py): the pure fit, and a CPU-only build saying where the model runs."""

from __future__ import annotations

import httpx
from support.process import ServerProcess
from wire import MODEL, post_ok

from nomoat.engine.offload import MARGIN, GpuDevice, fit_layers, gpu_device
from nomoat.errors import ConfigError

MIB = 1024 * 1024
GIB = 1024 * MIB


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
    assert gpu_device() is None, "this test proves the CPU-only path"
    post_ok(client, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                                              "max_tokens": 2})
    log = server.log()
    assert "model smollm2-135m runs on the CPU (n_gpu_layers auto: no GPU backend in this build" in log
    assert "gpu_layers=0)" in log
