"""Per-GPU memory and utilisation in a service's own `/metrics`, read through NVML.

`register_gpu_metrics()` is the one call a GPU service makes at start-up. NVML
(`nvidia-ml-py`, module `pynvml`) is imported only then, and only used when the NVIDIA
driver library answers: on a machine without a GPU nothing is registered and nothing
is exported, so no GPU series ever claims a device that is not there.

Series (labels `gpu` = NVML index, `uuid`, `name` = product name):
`sdstack_gpu_memory_used_bytes`, `sdstack_gpu_memory_total_bytes`,
`sdstack_gpu_utilization_ratio` (0–1, busy share of the last sample period),
`sdstack_gpu_temperature_celsius`, `sdstack_gpu_power_watts`. Readings are taken when
Prometheus scrapes, never in the background.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from prometheus_client.core import REGISTRY, CollectorRegistry, GaugeMetricFamily, Metric

log = logging.getLogger(__name__)

_LABELS = ["gpu", "uuid", "name"]
_lock = threading.Lock()
_registered: dict[int, GpuCollector] = {}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuCollector:
    """A Prometheus collector that reads every NVML device at scrape time."""

    def __init__(self, nvml: ModuleType) -> None:
        self.nvml = nvml

    def describe(self) -> list[Metric]:
        return []  # readings are taken lazily at scrape time, never at registration

    def collect(self) -> Iterator[Metric]:
        nvml = self.nvml
        families = {
            "memory_used": GaugeMetricFamily(
                "sdstack_gpu_memory_used_bytes", "GPU memory in use, per device.", labels=_LABELS
            ),
            "memory_total": GaugeMetricFamily(
                "sdstack_gpu_memory_total_bytes", "GPU memory in all, per device.", labels=_LABELS
            ),
            "utilization": GaugeMetricFamily(
                "sdstack_gpu_utilization_ratio",
                "Share of the last sample period the GPU was busy (0-1), per device.",
                labels=_LABELS,
            ),
            "temperature": GaugeMetricFamily(
                "sdstack_gpu_temperature_celsius", "GPU core temperature.", labels=_LABELS
            ),
            "power": GaugeMetricFamily(
                "sdstack_gpu_power_watts", "GPU power draw.", labels=_LABELS
            ),
        }
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as error:
            log.warning("NVML cannot count devices: %s", error)
            return
        for index in range(count):
            self._read_device(index, families)
        yield from (family for family in families.values() if family.samples)

    def _read_device(self, index: int, families: dict[str, GaugeMetricFamily]) -> None:
        nvml = self.nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            labels = [
                str(index),
                _text(nvml.nvmlDeviceGetUUID(handle)),
                _text(nvml.nvmlDeviceGetName(handle)),
            ]
        except nvml.NVMLError as error:
            log.warning("NVML cannot read GPU %d: %s", index, error)
            return
        readings: dict[str, Callable[[], float]] = {
            "memory_used": lambda: nvml.nvmlDeviceGetMemoryInfo(handle).used,
            "memory_total": lambda: nvml.nvmlDeviceGetMemoryInfo(handle).total,
            "utilization": lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0,
            "temperature": lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
            "power": lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
        }
        for key, read in readings.items():
            try:
                families[key].add_metric(labels, float(read()))
            except nvml.NVMLError:  # not every board reports every reading (e.g. MIG, power)
                continue


def _load_nvml() -> ModuleType | None:
    """`pynvml`, initialised, when the package and an NVIDIA driver are both present."""
    try:
        import pynvml  # lazily: only GPU services need it, and only when they start
    except ImportError:
        log.info("nvidia-ml-py is not installed; no GPU metrics")
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        log.info("no NVIDIA driver answers (%s); no GPU metrics", error)
        return None
    return pynvml


def register_gpu_metrics(registry: CollectorRegistry = REGISTRY) -> bool:
    """Exports per-GPU readings in `registry` when NVML sees a driver; True if it does.

    Idempotent: a second call for the same registry registers nothing more.
    """
    with _lock:
        if id(registry) in _registered:
            return True
        nvml = _load_nvml()
        if nvml is None:
            return False
        collector = GpuCollector(nvml)
        registry.register(collector)
        _registered[id(registry)] = collector
        log.info("GPU metrics from NVML for %d device(s)", nvml.nvmlDeviceGetCount())
        return True
