"""diffusers component weights → the original CompVis/A1111 single-file layout.

The reverse of what diffusers does when it loads a single file (`loaders/single_file_utils.py`),
written from the layout itself. Names follow the SD 1.x topology: U-Net blocks of
`layers_per_block` resnets (+ attentions) then a down/up sampler, a 4-block VAE whose decoder
blocks are numbered in reverse, and a CLIP text encoder under `cond_stage_model.transformer.`.
Every key must map: an unknown name raises KeyError instead of being dropped silently.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from services.common.sd.sd_configs import SDArchitecture

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
TEXT_MODEL_PREFIX = TEXT_PREFIX + "text_model."
PREFIXES = (UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX)
LAYOUT = "compvis-sd1"

_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_VAE_FIXED = {
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_norm_out": "decoder.norm_out",
}
_VAE_SAME = frozenset(
    {"encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out"}
    | {"quant_conv", "post_quant_conv"}
)

_DOWN = re.compile(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)")
_DOWNSAMPLE = re.compile(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)")
_UP = re.compile(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)")
_UPSAMPLE = re.compile(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)")
_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")
_VAE_BLOCK = re.compile(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)")
_VAE_SAMPLER = re.compile(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(down|up)samplers\.0\.(.+)")
_VAE_MID = re.compile(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)")


def _rename_head(rest: str, table: Mapping[str, str]) -> str:
    """Rename the leading module path of `rest` (e.g. `norm1.weight`) with `table`."""
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def _unet_part(kind: str, rest: str) -> tuple[int, str]:
    """(sub-index, renamed rest): a resnet is sub-module 0 of its block, an attention 1."""
    if kind == "resnets":
        return 0, _rename_head(rest, _RESNET)
    return 1, rest


def unet_key(key: str, layers_per_block: int, attention_up_blocks: frozenset[int]) -> str:
    """CompVis name (without prefix) of a diffusers `UNet2DConditionModel` parameter."""
    per_block = layers_per_block + 1
    head, _, tail = key.rpartition(".")
    if head in _UNET_FIXED:
        return f"{_UNET_FIXED[head]}.{tail}"
    if m := _DOWN.fullmatch(key):
        sub, rest = _unet_part(m[2], m[4])
        return f"input_blocks.{int(m[1]) * per_block + int(m[3]) + 1}.{sub}.{rest}"
    if m := _DOWNSAMPLE.fullmatch(key):
        return f"input_blocks.{(int(m[1]) + 1) * per_block}.0.op.{m[2]}"
    if m := _MID.fullmatch(key):
        sub, rest = _unet_part(m[1], m[3])
        return f"middle_block.{2 * int(m[2]) + sub}.{rest}"
    if m := _UP.fullmatch(key):
        sub, rest = _unet_part(m[2], m[4])
        return f"output_blocks.{int(m[1]) * per_block + int(m[3])}.{sub}.{rest}"
    if m := _UPSAMPLE.fullmatch(key):
        block = int(m[1])
        sub = 2 if block in attention_up_blocks else 1
        return f"output_blocks.{block * per_block + layers_per_block}.{sub}.conv.{m[2]}"
    raise KeyError(f"U-Net parameter with no CompVis name: {key}")


def vae_key(key: str, num_blocks: int) -> str:
    """CompVis name (without prefix) of a diffusers `AutoencoderKL` parameter."""
    head, _, tail = key.rpartition(".")
    if head in _VAE_FIXED:
        return f"{_VAE_FIXED[head]}.{tail}"
    if m := _VAE_BLOCK.fullmatch(key):
        block = _vae_block_index(m[2], int(m[3]), num_blocks)
        rest = _rename_head(m[5], {"conv_shortcut": "nin_shortcut"})
        return f"{m[1]}.{m[2]}.{block}.block.{m[4]}.{rest}"
    if m := _VAE_SAMPLER.fullmatch(key):
        block = _vae_block_index(m[2], int(m[3]), num_blocks)
        return f"{m[1]}.{m[2]}.{block}.{m[4]}sample.{m[5]}"
    if m := _VAE_MID.fullmatch(key):
        if m[2] == "resnets":
            return f"{m[1]}.mid.block_{int(m[3]) + 1}.{m[4]}"
        return f"{m[1]}.mid.attn_{int(m[3]) + 1}.{_rename_head(m[4], _VAE_ATTENTION)}"
    if head in _VAE_SAME:
        return key
    raise KeyError(f"VAE parameter with no CompVis name: {key}")


def _vae_block_index(direction: str, index: int, num_blocks: int) -> int:
    """The CompVis decoder numbers its `up` blocks from the lowest resolution up: reversed."""
    return num_blocks - 1 - index if direction == "up" else index


def text_key(key: str) -> str:
    """File name of a CLIP text-encoder parameter (transformers 5 drops `text_model.`)."""
    return TEXT_PREFIX + key if key.startswith("text_model.") else TEXT_MODEL_PREFIX + key


_TEXT_MODEL_HEADS = ("embeddings.", "encoder.", "final_layer_norm.")


def with_text_model(name: str) -> str:
    """`name`, with `text_model.` put back if it is a CLIP text-encoder key written without it.

    transformers 5's `CLIPTextModel` has no `text_model.` level, so a folder it saved, run
    through diffusers' `convert_diffusers_to_original_stable_diffusion.py`, gives
    `cond_stage_model.transformer.encoder.…`; A1111 renames such keys when it loads a file,
    and diffusers' single-file loader only recognises the CLIP text encoder by the long form.
    """
    if name.startswith(TEXT_PREFIX) and name[len(TEXT_PREFIX) :].startswith(_TEXT_MODEL_HEADS):
        return TEXT_MODEL_PREFIX + name[len(TEXT_PREFIX) :]
    return name


def _vae_tensor(name: str, tensor: Tensor) -> Tensor:
    """The CompVis VAE attention uses 1×1 convolutions where diffusers uses linear layers."""
    if ".mid.attn_" in name and tensor.ndim == 2:
        return tensor.reshape(*tensor.shape, 1, 1)
    return tensor


def unet_to_compvis(unet: nn.Module) -> dict[str, Tensor]:
    config = unet.config  # type: ignore[attr-defined]
    attention_up = frozenset(
        i for i, kind in enumerate(config.up_block_types) if kind.startswith("CrossAttn")
    )
    lpb = config.layers_per_block
    return {UNET_PREFIX + unet_key(k, lpb, attention_up): v for k, v in unet.state_dict().items()}


def vae_to_compvis(vae: nn.Module) -> dict[str, Tensor]:
    num_blocks = len(vae.config.block_out_channels)  # type: ignore[attr-defined]
    out = {}
    for key, tensor in vae.state_dict().items():
        name = vae_key(key, num_blocks)
        out[VAE_PREFIX + name] = _vae_tensor(name, tensor)
    return out


def text_encoder_to_compvis(text_encoder: nn.Module) -> dict[str, Tensor]:
    """The text encoder's weights, plus `position_ids` as real SD 1.x files carry it."""
    out = {text_key(k): v for k, v in text_encoder.state_dict().items()}
    positions = text_encoder.config.max_position_embeddings  # type: ignore[attr-defined]
    ids = torch.arange(positions, dtype=torch.int64, device="cpu").unsqueeze(0)
    out.setdefault(TEXT_MODEL_PREFIX + "embeddings.position_ids", ids)
    return out


def to_compvis_state_dict(
    unet: nn.Module, vae: nn.Module, text_encoder: nn.Module
) -> dict[str, Tensor]:
    """One state dict in the CompVis/A1111 single-file layout, from the three components."""
    return {
        **unet_to_compvis(unet),
        **vae_to_compvis(vae),
        **text_encoder_to_compvis(text_encoder),
    }


def save_single_file(pipe: StableDiffusionPipeline, path: Path, arch: SDArchitecture) -> Path:
    """Write `pipe`'s weights as one A1111-layout `.safetensors`, atomically.

    `__metadata__` records the architecture so the loader need not guess it from shapes.
    """
    tensors = to_compvis_state_dict(pipe.unet, pipe.vae, pipe.text_encoder)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    metadata = {
        "format": "pt",
        "sdstack.layout": LAYOUT,
        "sdstack.architecture": json.dumps(arch.to_dict(), sort_keys=True),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)
    return path
