"""Checks an uploaded model file before it enters the store, so that nothing in the store
is unloadable or unsafe. Pickles are only ever read through the safe loader.

- checkpoints: SD 1.x, checked from the safetensors header alone (a `.ckpt` or a diffusers
  folder is loaded once);
- LoRAs: a kohya/A1111 or diffusers layout, from the header;
- VAEs: VAE tensors, safely read (whether they fit a checkpoint is checked at use);
- upscalers: an ESRGAN-family network;
- taggers: an ONNX file (checked when the trainer loads it).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from services.common.proto.sdstack.v1 import common_pb2
from services.common.sd.checkpoint_loader import check_single_file, load_pipeline
from services.generator.loras import inspect_lora
from services.generator.upscalers import load_upscaler
from services.generator.vaes import read_vae_file


def validate_model_file(
    path: Path, kind: int, file_format: str, *, config_root: Path, tokenizer_dir: Path
) -> None:
    """Raises `InvalidArgument` naming the problem when `path` is not a usable `kind`."""
    if kind == common_pb2.MODEL_KIND_CHECKPOINT and file_format == "safetensors":
        check_single_file(path)
    elif kind == common_pb2.MODEL_KIND_CHECKPOINT and path.is_dir():
        load_pipeline(path, config_root=config_root, tokenizer_dir=tokenizer_dir)
    elif kind == common_pb2.MODEL_KIND_CHECKPOINT:
        _with_suffix(path, file_format, lambda p: _load_ckpt(p, config_root, tokenizer_dir))
    elif kind == common_pb2.MODEL_KIND_LORA:
        inspect_lora(path)
    elif kind == common_pb2.MODEL_KIND_VAE:
        _with_suffix(path, file_format, read_vae_file)
    elif kind == common_pb2.MODEL_KIND_UPSCALER:
        _with_suffix(path, file_format, load_upscaler)


def _with_suffix(path: Path, file_format: str, check: Callable[[Path], object]) -> None:
    """Loaders pick the reader by suffix; uploads are spooled without one."""
    with tempfile.TemporaryDirectory(prefix="sdstack-check-") as folder:
        named = Path(folder) / f"upload.{file_format}"
        try:
            named.hardlink_to(path)
        except OSError:
            shutil.copyfile(path, named)
        check(named)


def _load_ckpt(path: Path, config_root: Path, tokenizer_dir: Path) -> None:
    load_pipeline(path, config_root=config_root, tokenizer_dir=tokenizer_dir)
