"""Stand-alone VAE files as A1111 users have them, loaded into an `AutoencoderKL`.

A VAE file is a `.safetensors`, or a `.pt`/`.ckpt` read with `torch.load(weights_only=True)` only
(a pickle that carries code is refused, never run). Its keys are in the CompVis layout, bare
(`encoder.down.0.block.0.conv1.weight`) or under `first_stage_model.`, or already diffusers
names. CompVis names go through diffusers' own `convert_ldm_vae_checkpoint` (the conversion
`from_single_file` uses). That function passes unknown names through and drops some silently,
so the file's names are also checked, in its own layout, against the project's
diffusers→CompVis map (`checkpoint_layout.vae_key`): the file must match the model exactly, name
for name and shape for shape, or it is refused as `InvalidArgument("vae", ...)`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from services.common.errors import InvalidArgument, NotFound
from services.common.sd.checkpoint_layout import VAE_PREFIX, vae_key, vae_to_compvis
from services.common.sd.checkpoint_loader import load_weights_only, read_safetensors_header

FIELD = "vae"
PICKLE_SUFFIXES = (".pt", ".ckpt", ".bin", ".pth")
VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
# Training leftovers in original VAE checkpoints (discriminator, LPIPS, EMA counters); A1111
# drops them too.
IGNORED_PREFIXES = ("loss.", "model_ema.")
DIFFUSERS_MARKERS = (".down_blocks.", ".up_blocks.", ".mid_block.")
MAX_NESTING = 4

Tensors = dict[str, torch.Tensor]


def _invalid(rule: str) -> InvalidArgument:
    return InvalidArgument(FIELD, rule)


def bound_memory(vae: AutoencoderKL, tile_size: int) -> None:
    """Large pictures through `vae` in tiles, and batches one picture at a time (diffusers'
    tiling and slicing), so a 2048² picture needs about the memory of one tile.

    diffusers tiles a picture when a side is longer than its tile, overlapping tiles by a
    quarter and blending them. Its tile is the model's `sample_size` (512 for SD 1.x); here
    it is `tile_size`, so pictures up to that size still decode whole, exactly as without
    tiling (tiles split GroupNorm's statistics, which can shift colours slightly). 0: never.
    """
    vae.enable_slicing()
    if not tile_size:
        vae.disable_tiling()
        return
    vae.enable_tiling()
    vae.tile_sample_min_size = tile_size
    vae.tile_latent_min_size = tile_size // 2 ** (len(vae.config.block_out_channels) - 1)


def load_vae(path: Path, like: AutoencoderKL) -> AutoencoderKL:
    """A new `AutoencoderKL` with `like`'s config, dtype and device and `path`'s weights."""
    if not path.is_file():
        raise NotFound("vae", path.name)
    tensors = read_vae_file(path)
    diffusers_layout = any(marker in name for name in tensors for marker in DIFFUSERS_MARKERS)
    state = tensors if diffusers_layout else _convert(tensors, like)
    expected = like.state_dict()
    _check_shapes(state, expected)
    _check_names(set(tensors), set(expected) if diffusers_layout else _compvis_names(like))
    return _build(state, like)


def read_vae_file(path: Path) -> Tensors:
    """The VAE tensors of a file, safely read; whether they fit a model is `load_vae`'s check."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(path)
    raise _invalid(f"unsupported VAE file type {path.suffix!r}: use .safetensors, .pt or .ckpt")


def _read_safetensors(path: Path) -> Tensors:
    """Only the VAE's tensors are read: a whole checkpoint works without loading its U-Net."""
    try:
        shapes, _metadata = read_safetensors_header(path)
        renamed = _vae_names(list(shapes))
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {new: handle.get_tensor(old) for old, new in renamed.items()}
    except InvalidArgument as exc:
        raise _invalid(exc.violations[0].rule) from exc
    except SafetensorError as exc:
        raise _invalid(f"corrupt safetensors file: {exc}") from exc


def _read_pickle(path: Path) -> Tensors:
    """Plain tensors only: `weights_only=True` refuses any pickle that builds other objects."""
    obj = load_weights_only(path, FIELD)
    for _ in range(MAX_NESTING):  # bounded: a pickle can make a dict that contains itself
        if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
            break
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise _invalid(f"{path.name} holds no state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return {new: tensors[old] for old, new in _vae_names(list(tensors)).items()}


def _vae_names(names: list[str]) -> dict[str, str]:
    """File name → VAE name (prefix removed) of the VAE's tensors; under `first_stage_model.`
    when any name is, so a whole checkpoint's VAE part works."""
    if any(name.startswith(VAE_PREFIX) for name in names):
        names = [name for name in names if name.startswith(VAE_PREFIX)]
    renamed = {
        name: name.removeprefix(VAE_PREFIX)
        for name in names
        if not name.removeprefix(VAE_PREFIX).startswith(IGNORED_PREFIXES)
    }
    if not renamed:
        raise _invalid("the file holds no VAE tensors")
    strays = sorted(new for new in renamed.values() if not new.startswith(VAE_PARTS))
    if strays:
        raise _invalid(f"not a VAE file: unexpected tensors {_listed(strays)}")
    return renamed


def _convert(tensors: Tensors, like: AutoencoderKL) -> Tensors:
    try:
        converted = convert_ldm_vae_checkpoint(tensors, like.config)
    except (KeyError, IndexError, ValueError, RuntimeError) as exc:
        raise _invalid(f"VAE weights in an unknown layout: {exc}") from exc
    return {name: t for name, t in converted.items() if t is not None}


def _compvis_names(like: AutoencoderKL) -> set[str]:
    """The CompVis name of every weight of `like` (the project's own diffusers→CompVis map)."""
    blocks = len(like.config.block_out_channels)
    return {vae_key(name, blocks) for name in like.state_dict()}


def _check_shapes(state: Tensors, expected: Tensors) -> None:
    """Shapes first: a VAE of other widths also differs in names, and this says why."""
    wrong = sorted(k for k, t in expected.items() if k in state and state[k].shape != t.shape)
    if wrong:
        first = wrong[0]
        raise _invalid(
            f"VAE made for another model architecture: wrong shapes in {_listed(wrong)} "
            f"({first}: {tuple(state[first].shape)}, needs {tuple(expected[first].shape)})"
        )


def _check_names(found: set[str], expected: set[str]) -> None:
    """Every weight present and nothing else, in the file's own naming."""
    missing, extra = sorted(expected - found), sorted(found - expected)
    problems = [f"{len(missing)} missing ({_listed(missing)})"] if missing else []
    problems += [f"{len(extra)} unexpected ({_listed(extra)})"] if extra else []
    if problems:
        raise _invalid(f"not a complete VAE for this model: tensors {'; '.join(problems)}")


def _build(state: Tensors, like: AutoencoderKL) -> AutoencoderKL:
    """Construct on the meta device (no random init) and adopt the file's tensors."""
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(like.config)
    state = {
        name: t.to(dtype=like.dtype) if t.is_floating_point() else t for name, t in state.items()
    }
    try:
        vae.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise _invalid(f"VAE weights do not fit this model: {exc}") from exc
    return vae.to(device=like.device).eval().requires_grad_(False)


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def make_vae_file(
    vae: AutoencoderKL,
    path: Path,
    *,
    seed: int,
    prefix: bool = False,
    strength: float = 0.05,
) -> Path:
    """Test factory: `vae`'s weights in the CompVis layout, each float tensor scaled by
    `1 + strength·N(0, 1)` (seeded), so a "different VAE" decodes a different image;
    `strength=0` writes an exact copy. `.pt`/`.ckpt` paths get a pickled `{"state_dict": …}`."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, tensor in vae_to_compvis(vae).items():
        tensor = tensor.detach().to("cpu")
        if strength and tensor.is_floating_point():
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
            tensor = (tensor.float() * (1 + strength * noise)).to(tensor.dtype)
        out[name if prefix else name.removeprefix(VAE_PREFIX)] = tensor.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        torch.save({"state_dict": out}, path)
    else:
        save_file(out, str(path))
    return path
