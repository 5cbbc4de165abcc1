"""SDSTACK_DEVICE, SDSTACK_PRECISION and SDSTACK_COMPILE_UNET: what `auto` picks, and what is
refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.common.errors import ConfigError
from services.common.sd import devices

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(("amx", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_a_cpu_is_bfloat16_only_where_it_has_amx(
    monkeypatch: pytest.MonkeyPatch, amx: bool, expected: torch.dtype
) -> None:
    monkeypatch.setattr(devices, "cpu_has_amx", lambda: amx)
    assert devices.pick_dtype("auto", CPU) == expected


def test_auto_on_a_gpu_is_float16() -> None:
    assert devices.pick_dtype("auto", CUDA) == torch.float16


def test_an_explicit_precision_is_kept() -> None:
    assert devices.pick_dtype("float32", CUDA) == torch.float32
    assert devices.pick_dtype("bfloat16", CPU) == torch.bfloat16


def test_float16_on_a_cpu_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError) as raised:
        devices.pick_dtype("float16", CPU)
    assert raised.value.setting == "SDSTACK_PRECISION"
    assert "bfloat16" in raised.value.problem


def test_cuda_without_a_gpu_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as raised:
        devices.pick_device("cuda")
    assert raised.value.setting == "SDSTACK_DEVICE"
    assert devices.pick_device("auto") == CPU


def test_amx_detection_matches_the_cpu_flags() -> None:
    flags = Path("/proc/cpuinfo").read_text().split()
    assert devices.cpu_has_amx() == ("amx_tile" in flags and "amx_bf16" in flags)


def test_cuda_graphs_on_a_cpu_are_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError) as raised:
        devices.check_compile_mode("reduce-overhead", CPU)
    assert raised.value.setting == "SDSTACK_COMPILE_UNET"
    assert "GPU" in raised.value.problem
    devices.check_compile_mode("default", CPU)
    devices.check_compile_mode("reduce-overhead", CUDA)
