"""TAESD previews: a tiny distilled VAE decoder that shows the picture as it forms.

madebyollin's TAESD decodes SD latents to a full-size picture with ~1 M parameters, a small
fraction of the VAE's work, and looks close to it; A1111 and ComfyUI use it for live previews.
A decoder file comes in one of two layouts, both loaded into diffusers' `DecoderTiny`:

- the original (`taesd_decoder.safetensors` / `.pth`): a torch Sequential whose index 0 is a
  clamp without weights, so keys run `1.weight`, `3.conv.0.weight`, …;
- diffusers' `AutoencoderTiny` (`decoder.layers.0.weight`, …; its clamp is in `forward`), whose
  encoder tensors, if any, are ignored.

Decoders are imported as models of kind VAE_APPROX (bucket `models`, `vae-approx/`); pickles
only ever through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from diffusers.models.autoencoders.vae import DecoderTiny
from PIL import Image
from safetensors.torch import save_file

from services.common.errors import InvalidArgument
from services.common.sd.checkpoint_loader import load_safetensors, load_weights_only

FIELD = "model"
SD1_DECODER = {
    "in_channels": 4,
    "out_channels": 3,
    "num_blocks": (3, 3, 3, 1),
    "block_out_channels": (64, 64, 64, 64),
    "upsampling_scaling_factor": 2,
    "act_fn": "relu",
    "upsample_fn": "nearest",
}
"""TAESD's decoder for SD 1.x/2.x latents (diffusers' `AutoencoderTiny` defaults)."""
_ORIGINAL_KEY = re.compile(r"^(\d+)\.(.+)$")
_DIFFUSERS_PREFIX = "decoder."


def load_decoder(path: Path, device: torch.device, dtype: torch.dtype) -> DecoderTiny:
    """The decoder in `path`, on `device` in `dtype`; refuses a file that is not one."""
    state = _decoder_state(_read_tensors(path))
    with torch.device("meta"):
        decoder = DecoderTiny(**SD1_DECODER)
    try:
        decoder.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise _invalid(f"its tensors do not fit TAESD's SD 1.x decoder: {exc}") from exc
    return decoder.to(device=device, dtype=dtype).eval().requires_grad_(False)


@torch.no_grad()
def taesd_preview(decoder: DecoderTiny, latents: torch.Tensor) -> Image.Image:
    """The first image of `latents` (as the U-Net sees them), decoded by TAESD."""
    weight = next(decoder.parameters())
    pixels = decoder(latents[:1].to(device=weight.device, dtype=weight.dtype))[0]
    rgb = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(np.ascontiguousarray(rgb.permute(1, 2, 0).cpu().numpy()))


def make_taesd_file(path: Path, *, seed: int = 0, layout: str = "original") -> Path:
    """Writes a random-weight TAESD decoder in the `original` or `diffusers` layout (for
    tests: the project builds its own models); `.safetensors`, else a torch pickle."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = DecoderTiny(**SD1_DECODER)
    state = {name: t.detach().clone() for name, t in decoder.state_dict().items()}
    if layout == "original":
        state = {_original_name(name): t for name, t in state.items()}
    elif layout == "diffusers":
        state = {_DIFFUSERS_PREFIX + name: t for name, t in state.items()}
    else:
        raise ValueError(f"unknown layout {layout!r}")
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix.lower() == ".safetensors":
        return load_safetensors(path, FIELD)
    obj = load_weights_only(path, FIELD)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise _invalid("the file holds no state dict")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _decoder_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`DecoderTiny` names (`layers.N.…`) from either layout."""
    if any(name.startswith(_DIFFUSERS_PREFIX) for name in tensors):
        return {
            name.removeprefix(_DIFFUSERS_PREFIX): t
            for name, t in tensors.items()
            if name.startswith(_DIFFUSERS_PREFIX)
        }
    state = {}
    for name, tensor in tensors.items():
        match = _ORIGINAL_KEY.match(name)
        if match is None or int(match.group(1)) < 1:
            raise _invalid(f"unexpected tensor {name!r}: not a TAESD decoder")
        state[f"layers.{int(match.group(1)) - 1}.{match.group(2)}"] = tensor
    return state


def _original_name(name: str) -> str:
    index, rest = name.removeprefix("layers.").split(".", 1)
    return f"{int(index) + 1}.{rest}"


def _invalid(rule: str) -> InvalidArgument:
    return InvalidArgument(FIELD, rule)
