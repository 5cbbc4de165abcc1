"""Load SD 1.x checkpoints safely and offline: A1111 single files and diffusers folders.

A single file (`.safetensors`, or `.ckpt` through `torch.load(weights_only=True)` only) is checked
before diffusers sees it: the safetensors header is parsed and bounds-checked by hand, and every
tensor name and shape is compared with what the chosen architecture needs, so a truncated file, a
lying header, a code-carrying pickle or a model of another family becomes `InvalidArgument` naming
the problem. The architecture comes from the file's `sdstack.architecture` metadata, else from
the U-Net's widths (SD 1.5 when none fits). Text-encoder keys written without `text_model.` are
renamed as A1111 does. Loading then takes diffusers' own `from_single_file` path with a locally
written config folder (and a temporary renamed copy of a file that needed renaming).
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import shutil
import struct
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from services.common.errors import InvalidArgument, NotFound
from services.common.sd import sd_configs
from services.common.sd.checkpoint_layout import (
    PREFIXES,
    TEXT_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    to_compvis_state_dict,
    with_text_model,
)
from services.common.sd.sd_configs import SD15, TINY, SDArchitecture

log = logging.getLogger(__name__)

FIELD = "model"
ARCH_METADATA_KEY = "sdstack.architecture"
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_NESTING = 4
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
FAMILY_HINTS = {
    "conditioner.embedders.": "it looks like an SDXL checkpoint",
    "cond_stage_model.model.": "it looks like an SD 2.x checkpoint (OpenCLIP text encoder)",
    "model.diffusion_model.joint_blocks.": "it looks like an SD 3 checkpoint",
    "model.diffusion_model.double_blocks.": "it looks like a Flux checkpoint",
}

PARTS = {UNET_PREFIX: "U-Net", VAE_PREFIX: "VAE", TEXT_PREFIX: "CLIP text encoder"}

Shapes = dict[str, tuple[int, ...]]
T = TypeVar("T")


@dataclass(frozen=True)
class _Options:
    dtype: torch.dtype
    architecture: SDArchitecture | None


def _invalid(rule: str) -> InvalidArgument:
    return InvalidArgument(FIELD, rule)


# --- safetensors header ----------------------------------------------------------------------


def read_safetensors_header(path: Path) -> tuple[Shapes, dict[str, str]]:
    """Tensor shapes and `__metadata__` of a `.safetensors` file, after checking every offset."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise _invalid("truncated safetensors file: shorter than its 8-byte header length")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(size - 8, MAX_HEADER_BYTES):
            raise _invalid(
                f"truncated or lying safetensors header: it declares {header_len} header bytes "
                f"but the file has {size - 8} after the length field"
            )
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _invalid(f"corrupt safetensors header: not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _invalid("corrupt safetensors header: not a JSON object")
    metadata = _header_metadata(header.pop("__metadata__", None))
    shapes = _check_offsets(header, data_size=size - 8 - header_len)
    return shapes, metadata


def _header_metadata(metadata: Any) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _invalid("corrupt safetensors header: __metadata__ must map strings to strings")
    return metadata


def _entry(name: str, info: Any) -> tuple[tuple[int, ...], int, int]:
    """(shape, begin, end) of one header entry, with the byte length its shape implies checked."""
    try:
        dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        ints = [*shape, begin, end]
    except (KeyError, TypeError, ValueError) as exc:
        raise _invalid(f"corrupt safetensors header: bad entry for tensor {name}") from exc
    if dtype not in DTYPE_BYTES or not all(isinstance(i, int) and i >= 0 for i in ints):
        raise _invalid(f"corrupt safetensors header: bad dtype, shape or offsets for {name}")
    expected = math.prod(shape) * DTYPE_BYTES[dtype]
    if end - begin != expected:
        raise _invalid(
            f"lying safetensors header: tensor {name} has shape {shape} {dtype} "
            f"({expected} bytes) but its offsets span {end - begin} bytes"
        )
    return tuple(shape), begin, end


def _check_offsets(header: dict[str, Any], data_size: int) -> Shapes:
    entries = {name: _entry(name, info) for name, info in header.items()}
    position = 0
    for name, (_shape, begin, end) in sorted(entries.items(), key=lambda item: item[1][1:]):
        if begin != position:
            raise _invalid(f"lying safetensors header: tensor {name} overlaps or leaves a gap")
        if end > data_size:
            raise _invalid(
                f"truncated safetensors file: tensor {name} ends at byte {end} "
                f"but the file holds {data_size} bytes of data"
            )
        position = end
    if position != data_size:
        extra = data_size - position
        raise _invalid(f"lying safetensors header: {extra} bytes after the last tensor")
    return {name: shape for name, (shape, _b, _e) in entries.items()}


def load_safetensors(path: Path, field: str) -> dict[str, torch.Tensor]:
    """Every tensor of a `.safetensors` file, on the CPU; a damaged file is refused, naming
    `field`."""
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InvalidArgument(field, f"corrupt .safetensors file: {exc}") from exc


# --- .ckpt (pickle) --------------------------------------------------------------------------


def load_weights_only(path: Path, field: str) -> Any:
    """The object in a PyTorch pickle (`.ckpt`, `.pt`, `.pth`), read with
    `weights_only=True`: a pickle that carries code is refused, never run.

    Bytes that are not a PyTorch pickle make the weights-only unpickler fail in many ways
    (`KeyError` on a bad memo index, `IndexError`, `struct.error`, …), so every failure but
    the refusal is reported as a corrupt file, naming `field`."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise InvalidArgument(
            field,
            f"refused {path.suffix or 'pickle'} file: its pickle holds code or objects other "
            "than plain weights (only tensors are loaded; convert it to .safetensors)",
        ) from exc
    except Exception as exc:  # malformed bytes: the unpickler's failures have no common type
        raise InvalidArgument(
            field,
            f"corrupt {path.suffix or 'pickle'} file: cannot be read as PyTorch weights "
            f"({type(exc).__name__}: {exc})",
        ) from exc


def load_ckpt(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A `.ckpt`'s tensors and top-level string entries (metadata), read with
    `weights_only=True`: a pickle that carries code is refused, never run."""
    obj = load_weights_only(path, FIELD)
    if not isinstance(obj, dict):
        raise _invalid("corrupt .ckpt: it holds no state dict")
    metadata = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, str)}
    for _ in range(MAX_NESTING):  # bounded: a pickle can make a dict that contains itself
        if not isinstance(obj.get("state_dict"), dict):
            break
        obj = obj["state_dict"]
    tensors = {
        k: v
        for k, v in obj.items()
        if isinstance(k, str) and isinstance(v, torch.Tensor) and k.startswith(PREFIXES)
    }
    return tensors, metadata


def _write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors refuses tensors that share storage: copy the second and later of each."""
    seen: set[int] = set()
    out = {}
    for name, tensor in tensors.items():
        storage = tensor.untyped_storage().data_ptr()
        shared = storage in seen and tensor.numel() > 0
        seen.add(storage)
        out[name] = tensor.clone() if shared else tensor.contiguous()
    save_file(out, str(path))


# --- architecture check ----------------------------------------------------------------------


def architecture_of(metadata: dict[str, str]) -> SDArchitecture:
    """The architecture a file declares in its metadata, else SD 1.5 (what real files are)."""
    declared = metadata.get(ARCH_METADATA_KEY)
    if declared is None:
        return SD15
    try:
        return SDArchitecture.from_dict(json.loads(declared))
    except (ValueError, TypeError, AttributeError) as exc:
        raise _invalid(f"malformed {ARCH_METADATA_KEY} metadata: {exc}") from exc


KNOWN_ARCHITECTURES = (SD15, TINY)
"""Tried in order for files that do not declare theirs: real files are SD 1.5; the
project's tiny model may also travel as a plain `.ckpt` without metadata."""


def detect_architecture(shapes: Shapes, metadata: dict[str, str]) -> SDArchitecture:
    """The declared architecture, else the first known one whose U-Net widths the file has
    (else SD 1.5, whose width error is then the real problem).

    Only the widths pick it, not the whole layout: a tiny file with a broken text encoder is
    then reported as that, against the tiny layout, instead of as an SD 1.5 U-Net too narrow.
    """
    if ARCH_METADATA_KEY in metadata:
        return architecture_of(metadata)
    for arch in KNOWN_ARCHITECTURES:
        if _width_problem(shapes, arch) is None:
            return arch
    return SD15


def text_model_renames(names: Collection[str]) -> dict[str, str]:
    """{file name: layout name} for the text-encoder keys a file holds without `text_model.`
    (see `checkpoint_layout.with_text_model`); empty for a file in the usual layout.

    A file holding one tensor under both names is refused: which of the two is meant?
    """
    renames = {name: new for name in names if (new := with_text_model(name)) != name}
    both = sorted(new for new in renames.values() if new in names)
    if both:
        raise _invalid(
            "CLIP text encoder tensors appear both with and without `text_model.`: " + _listed(both)
        )
    return renames


def _renamed(entries: Mapping[str, T], renames: Mapping[str, str]) -> dict[str, T]:
    return {renames.get(name, name): value for name, value in entries.items()}


@lru_cache(maxsize=8)
def expected_shapes(arch: SDArchitecture) -> Shapes:
    """Every tensor name and shape a single file of `arch` must hold (built on the meta device)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(sd_configs.unet_config(arch))
        vae = AutoencoderKL.from_config(sd_configs.vae_config(arch))
        text = CLIPTextModel(CLIPTextConfig(**sd_configs.text_encoder_config(arch)))
    state = to_compvis_state_dict(unet, vae, text)
    state.pop(TEXT_PREFIX + "text_model.embeddings.position_ids", None)
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def _family_problem(shapes: Shapes) -> str | None:
    for prefix, hint in FAMILY_HINTS.items():
        if any(name.startswith(prefix) for name in shapes):
            return hint
    for prefix, part in PARTS.items():
        if not any(name.startswith(prefix) for name in shapes):
            return f"it has no {part} weights (no keys under `{prefix}`)"
    return None


def _width_problem(shapes: Shapes, arch: SDArchitecture) -> str | None:
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None or len(conv_in) != 4:
        return "it has no U-Net input convolution `input_blocks.0.0.weight`"
    if conv_in[:2] != (arch.unet.block_out_channels[0], arch.unet.in_channels):
        return (
            f"U-Net input convolution is {conv_in[0]}×{conv_in[1]} channels, "
            f"{arch.name} needs {arch.unet.block_out_channels[0]}×{arch.unet.in_channels}"
        )
    to_k = shapes.get(UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
    if to_k is None or len(to_k) != 2 or to_k[1] != arch.unet.cross_attention_dim:
        found = "missing" if to_k is None else to_k[-1]
        needed = arch.unet.cross_attention_dim
        return f"cross-attention width is {found}, {arch.name} needs {needed}"
    return None


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _same_shape(found: tuple[int, ...], needed: tuple[int, ...]) -> bool:
    """Equal up to trailing 1s: some files keep VAE attention as linear, not 1×1 conv, weights."""
    while len(found) > len(needed) and found[-1] == 1:
        found = found[:-1]
    while len(needed) > len(found) and needed[-1] == 1:
        needed = needed[:-1]
    return found == needed


def _tensor_problem(shapes: Shapes, arch: SDArchitecture) -> str | None:
    expected = expected_shapes(arch)
    missing = sorted(name for name in expected if name not in shapes)
    if missing:
        parts = [
            part for prefix, part in PARTS.items() if any(n.startswith(prefix) for n in missing)
        ]
        return (
            f"{' and '.join(parts)} incomplete, {len(missing)} tensors missing: {_listed(missing)}"
        )
    wrong = sorted(name for name, shape in expected.items() if not _same_shape(shapes[name], shape))
    if wrong:
        first = wrong[0]
        detail = f"{first}: {shapes[first]}, needs {expected[first]}"
        return f"wrong shapes in {_listed(wrong)} ({detail})"
    return None


def validate_layout(shapes: Shapes, arch: SDArchitecture) -> None:
    """Raise InvalidArgument unless `shapes` is a complete SD 1.x single file of `arch`."""
    problem = (
        _family_problem(shapes) or _width_problem(shapes, arch) or _tensor_problem(shapes, arch)
    )
    if problem:
        raise _invalid(f"not an SD 1.x checkpoint ({arch.name} layout expected): {problem}")


# --- config folder and loading ---------------------------------------------------------------


def config_folder(arch: SDArchitecture, config_root: Path, tokenizer_dir: Path) -> Path:
    """`config_root/<arch hash>/`, written once; concurrent writers race harmlessly."""
    folder = config_root / arch.config_hash()
    if (folder / "model_index.json").is_file():
        return folder
    config_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".config-", dir=config_root))
    sd_configs.write_config_folder(arch, tokenizer_dir, staging)
    try:
        staging.rename(folder)
    except OSError:
        if not (folder / "model_index.json").is_file():
            raise
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _from_single_file(path: Path, folder: Path, dtype: torch.dtype) -> StableDiffusionPipeline:
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path),
            config=str(folder),
            local_files_only=True,
            use_safetensors=True,
            dtype=dtype,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except (SafetensorError, ValueError, KeyError) as exc:
        raise _invalid(f"checkpoint cannot be loaded: {exc}") from exc
    return pipe


def _check_shapes(
    shapes: Shapes, metadata: dict[str, str], architecture: SDArchitecture | None
) -> tuple[SDArchitecture, dict[str, str]]:
    """The file's architecture and the renames its keys need, after checking its layout."""
    renames = text_model_renames(shapes.keys())
    shapes = _renamed(shapes, renames)
    arch = architecture or detect_architecture(shapes, metadata)
    validate_layout(shapes, arch)
    return arch, renames


def check_single_file(path: Path, architecture: SDArchitecture | None = None) -> SDArchitecture:
    """Validate a `.safetensors` single file without loading its weights; return its architecture.

    Cheap enough to run on upload: only the header is read.
    """
    shapes, metadata = read_safetensors_header(path)
    return _check_shapes(shapes, metadata, architecture)[0]


def _from_tensors(
    tensors: dict[str, torch.Tensor], folder: Path, config_root: Path, dtype: torch.dtype
) -> StableDiffusionPipeline:
    """Hand diffusers a temporary `.safetensors` of `tensors` (which is emptied once written,
    so that a large model is not held twice while diffusers reads the copy)."""
    fd, tmp_name = tempfile.mkstemp(suffix=".safetensors", dir=config_root)
    os.close(fd)
    try:
        _write_safetensors(tensors, Path(tmp_name))
        tensors.clear()
        return _from_single_file(Path(tmp_name), folder, dtype)
    finally:
        os.unlink(tmp_name)


def _load_safetensors(
    path: Path, config_root: Path, tokenizer_dir: Path, options: _Options
) -> StableDiffusionPipeline:
    """Load the file as it is, or through a renamed copy when its keys need renaming."""
    shapes, metadata = read_safetensors_header(path)
    arch, renames = _check_shapes(shapes, metadata, options.architecture)
    folder = config_folder(arch, config_root, tokenizer_dir)
    if not renames:
        return _from_single_file(path, folder, options.dtype)
    log.info("%s: %d text-encoder keys renamed to have `text_model.`", path.name, len(renames))
    tensors = _renamed(load_safetensors(path, FIELD), renames)
    return _from_tensors(tensors, folder, config_root, options.dtype)


def _load_ckpt(
    path: Path, config_root: Path, tokenizer_dir: Path, options: _Options
) -> StableDiffusionPipeline:
    """Safe-load the pickle, check it, and hand diffusers a temporary `.safetensors` of it."""
    tensors, metadata = load_ckpt(path)
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    arch, renames = _check_shapes(shapes, metadata, options.architecture)
    folder = config_folder(arch, config_root, tokenizer_dir)
    tensors = _renamed(tensors, renames)
    return _from_tensors(tensors, folder, config_root, options.dtype)


def _load_folder(path: Path, tokenizer_dir: Path, dtype: torch.dtype) -> StableDiffusionPipeline:
    if not (path / "model_index.json").is_file():
        raise _invalid(f"{path.name} is a folder without model_index.json, not a diffusers model")
    extra: dict[str, Any] = {}
    if not (path / "tokenizer").is_dir():
        tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        extra["tokenizer"] = tokenizer
    try:
        return StableDiffusionPipeline.from_pretrained(
            str(path),
            local_files_only=True,
            use_safetensors=True,
            dtype=dtype,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **extra,
        )
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise _invalid(f"diffusers folder {path.name} cannot be loaded: {exc}") from exc


def load_pipeline(
    path: Path,
    *,
    config_root: Path,
    tokenizer_dir: Path,
    dtype: torch.dtype = torch.float32,
    architecture: SDArchitecture | None = None,
) -> StableDiffusionPipeline:
    """Load an SD 1.x model from a single file or a diffusers folder, with no network.

    A single file's architecture is `architecture` when given, else the one its
    `sdstack.architecture` metadata declares, else SD 1.5.
    """
    if not path.exists():
        raise NotFound("model", path.name)
    options = _Options(dtype, architecture)
    suffix = path.suffix.lower()
    if path.is_dir():
        pipe = _load_folder(path, tokenizer_dir, dtype)
    elif suffix == ".safetensors":
        pipe = _load_safetensors(path, config_root, tokenizer_dir, options)
    elif suffix == ".ckpt":
        config_root.mkdir(parents=True, exist_ok=True)
        pipe = _load_ckpt(path, config_root, tokenizer_dir, options)
    else:
        raise _invalid(f"unsupported model file type {path.suffix!r}: use .safetensors or .ckpt")
    pipe.safety_checker = None
    pipe.set_progress_bar_config(disable=True)
    log.info("loaded %s", path.name)
    return pipe
