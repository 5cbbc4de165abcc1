"""Checks an uploaded model file before it enters the store, so that nothing in the store
is unloadable or unsafe. Pickles are only ever read through the safe loader.

- checkpoints: SD 1.x, checked from the safetensors header alone (a `.ckpt` or a diffusers
  folder is loaded once);
- LoRAs: a kohya/A1111 or diffusers layout, from the header;
- VAEs: VAE tensors, safely read (whether they fit a checkpoint is checked at use);
- upscalers: an ESRGAN-family network;
- taggers: an ONNX file: a protobuf `ModelProto` with a graph (the trainer loads it);
- VAE approximations: a TAESD decoder, loaded once.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

from services.common.errors import InvalidArgument
from services.common.proto.sdstack.v1 import common_pb2
from services.common.sd.checkpoint_loader import check_single_file, load_pipeline
from services.generator.loras import inspect_lora
from services.generator.taesd import load_decoder
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
    elif kind == common_pb2.MODEL_KIND_TAGGER:
        check_onnx_file(path)
    elif kind == common_pb2.MODEL_KIND_VAE_APPROX:
        _with_suffix(path, file_format, _load_taesd)


def check_onnx_file(path: Path) -> None:
    """Walks the top-level protobuf fields of an ONNX `ModelProto` (skipping their bodies,
    so a large model is not read): they must fill the file exactly and include
    `ir_version` (field 1) and `graph` (field 7). A pickle or zip named `.onnx` fails."""
    size = path.stat().st_size
    seen: set[tuple[int, int]] = set()
    try:
        with path.open("rb") as file:
            while file.tell() < size:
                key = _varint(file)
                number, wire = key >> 3, key & 7
                if number == 0 or wire not in (0, 1, 2, 5):
                    raise ValueError(f"field {number}, wire type {wire}")
                length = {0: 0, 1: 8, 5: 4}.get(wire)
                if wire == 0:
                    _varint(file)
                else:
                    file.seek(_varint(file) if length is None else length, 1)
                seen.add((number, wire))
            if file.tell() == size and {(1, 0), (7, 2)} <= seen:
                return
    except ValueError:
        pass
    raise InvalidArgument("model", "is not an ONNX model (a protobuf ModelProto with a graph)")


def _varint(file: BinaryIO) -> int:
    value = 0
    for shift in range(0, 64, 7):
        byte = file.read(1)
        if not byte:
            raise ValueError("ends inside a number")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    raise ValueError("number longer than 64 bits")


def _with_suffix(path: Path, file_format: str, check: Callable[[Path], object]) -> None:
    """Loaders pick the reader by suffix; uploads are spooled without one."""
    with tempfile.TemporaryDirectory(prefix="sdstack-check-") as folder:
        named = Path(folder) / f"upload.{file_format}"
        try:
            named.hardlink_to(path)
        except OSError:
            shutil.copyfile(path, named)
        check(named)


def _load_taesd(path: Path) -> None:
    load_decoder(path, torch.device("cpu"), torch.float32)


def _load_ckpt(path: Path, config_root: Path, tokenizer_dir: Path) -> None:
    load_pipeline(path, config_root=config_root, tokenizer_dir=tokenizer_dir)
