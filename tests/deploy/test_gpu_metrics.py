"""Per-GPU metrics from NVML (services/common/gpu_metrics.py), on whatever this machine has.

NVML is asked directly, in another process, how many GPUs there are; the collector must
export exactly that many devices (none on a machine without a GPU or driver).
"""

from __future__ import annotations

import subprocess
import sys

from prometheus_client import CollectorRegistry, generate_latest

from services.common.gpu_metrics import register_gpu_metrics

SERIES = (
    "sdstack_gpu_memory_used_bytes",
    "sdstack_gpu_memory_total_bytes",
    "sdstack_gpu_utilization_ratio",
)


def nvml_device_count() -> int:
    probe = (
        "import pynvml\n"
        "try:\n    pynvml.nvmlInit()\nexcept pynvml.NVMLError:\n    print(0)\n"
        "else:\n    print(pynvml.nvmlDeviceGetCount())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return int(result.stdout.strip())


def test_gpu_series_match_the_devices_nvml_sees() -> None:
    gpus = nvml_device_count()
    registry = CollectorRegistry()
    assert register_gpu_metrics(registry) is (gpus > 0)
    assert register_gpu_metrics(registry) is (gpus > 0)  # a second call adds nothing
    exposition = generate_latest(registry).decode()
    for series in SERIES:
        samples = [line for line in exposition.splitlines() if line.startswith(series + "{")]
        assert len(samples) == gpus, (series, samples)
    for line in exposition.splitlines():
        if line.startswith("sdstack_gpu_utilization_ratio{"):
            assert 0.0 <= float(line.rsplit(" ", 1)[1]) <= 1.0
