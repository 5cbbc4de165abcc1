"""Where the models run and at what precision (SDSTACK_DEVICE, SDSTACK_PRECISION)."""

from __future__ import annotations

import torch

from services.common.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(setting: str) -> torch.device:
    """`auto` is the GPU when there is one, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("SDSTACK_DEVICE", "cuda was asked for but no CUDA device is available")
    return torch.device(setting)


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """The weights' dtype for inference. `auto`: float16 on a GPU; on a CPU, bfloat16 where
    it has AMX tiles (oneDNN runs bf16 matrix work there about 3× faster than float32),
    float32 elsewhere (bf16 without AMX is emulated and slower)."""
    if setting == "auto":
        if device.type in ("cuda", "mps"):
            return torch.float16
        return torch.bfloat16 if cpu_has_amx() else torch.float32
    if setting not in DTYPES:
        raise ConfigError("SDSTACK_PRECISION", f"must be one of auto, {', '.join(DTYPES)}")
    if setting == "float16" and device.type == "cpu":
        raise ConfigError("SDSTACK_PRECISION", "float16 needs a GPU; on a CPU use bfloat16")
    return DTYPES[setting]


def prefers_channels_last(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the U-Net runs faster with channels-last activations. Measured on an AMX CPU
    (SD 1.5 U-Net, one pass): bfloat16 1.10× faster at 256², 1.25× at 512², while float32 is
    0.83-0.92× as fast. GPUs are left as they are until `bench.gpu` has measured them."""
    return device.type == "cpu" and dtype == torch.bfloat16


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Sapphire Rapids and later) that torch can use."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check and check() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_compile_mode(mode: str, device: torch.device) -> None:
    """CUDA graphs (`reduce-overhead`) replay recorded GPU work: there are none on a CPU."""
    if mode == "reduce-overhead" and device.type != "cuda":
        raise ConfigError("SDSTACK_COMPILE_UNET", "reduce-overhead (CUDA graphs) needs a GPU")
