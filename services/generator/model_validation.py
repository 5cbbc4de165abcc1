"""Checks an uploaded model file before it enters the store, so that nothing in the
store is unloadable or unsafe: checkpoints must be SD 1.x (safetensors checked from the
header alone, pickles only through the safe loader), other safetensors files must have
a sound header.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from services.common.errors import InvalidArgument
from services.common.proto.sdstack.v1 import common_pb2
from services.generator.checkpoint_loader import check_single_file, load_pipeline


def validate_model_file(
    path: Path, kind: int, file_format: str, *, config_root: Path, tokenizer_dir: Path
) -> None:
    if kind == common_pb2.MODEL_KIND_CHECKPOINT and file_format == "safetensors":
        check_single_file(path)
    elif kind == common_pb2.MODEL_KIND_CHECKPOINT:
        _check_ckpt_loads(path, config_root, tokenizer_dir)
    elif file_format == "safetensors":
        _check_safetensors_header(path)


def _check_ckpt_loads(path: Path, config_root: Path, tokenizer_dir: Path) -> None:
    """A `.ckpt` has no header to read: it is safe-loaded and built, then dropped."""
    suffixed = path.with_name(f"{path.name}.ckpt")
    path.rename(suffixed)
    try:
        load_pipeline(suffixed, config_root=config_root, tokenizer_dir=tokenizer_dir)
    finally:
        suffixed.rename(path)


def _check_safetensors_header(path: Path) -> None:
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
    except Exception as error:  # safetensors raises several types for a bad header
        raise InvalidArgument("file", f"not a valid safetensors file ({error})") from None
    if not names:
        raise InvalidArgument("file", "the safetensors file holds no tensors")
