"""Image upscalers: Pillow's Lanczos and ESRGAN-family models on a compact RRDBNet of our own.

`spandrel` would load these files but needs torchvision, which this install leaves out (SPEC §2,
§3), so the one architecture that covers ESRGAN, BSRGAN/RealSR and Real-ESRGAN files lives here.
Three key layouts are read and renamed to the module's own (the BasicSR names):

- "old" ESRGAN `nn.Sequential` keys: `model.0`, `model.1.sub.{i}.RDB{j}.conv{k}.0`,
  `model.1.sub.{nb}` (trunk conv), an upconv at `model.{3k}` per 2×, then `model.{3n+2}` (HR conv)
  and `model.{3n+4}` (last conv);
- "trunk" keys of xinntao/ESRGAN's later code and BSRGAN: `conv_first`, `RRDB_trunk.{i}.RDB{j}`,
  `trunk_conv`, `upconv{k}`, `HRconv`, `conv_last`;
- "new" Real-ESRGAN/BasicSR keys: `conv_first`, `body.{i}.rdb{j}.conv{k}`, `conv_body`,
  `conv_up{k}`, `conv_hr`, `conv_last`.

The scale is 2^(upconvs) divided by the pixel-unshuffle factor, which shows as `conv_first` taking
4× or 16× the output channels (Real-ESRGAN's 2× and 1× models). `.pth` files go through
`torch.load(weights_only=True)` only: a pickle that carries code is refused, never run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from services.common.errors import InvalidArgument, NotFound
from services.common.sd.checkpoint_loader import load_safetensors, load_weights_only

Layout = Literal["old", "trunk", "new"]
Shape = Sequence[int]
Value = TypeVar("Value")  # what a state dict maps its keys to: tensors, or their shapes

SCALES = (1, 2, 4, 8)
SHUFFLE_FACTORS = (1, 2, 4)
CONTAINERS = ("params_ema", "params", "state_dict", "model_state_dict")
PICKLE_SUFFIXES = (".pth", ".pt")
MAX_NESTING = 4
RESIDUAL_SCALE = 0.2
NEGATIVE_SLOPE = 0.2


# --- architecture ----------------------------------------------------------------------------


def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, 1, 1)


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3×3 convs; the fifth, scaled by 0.2, is added to the input."""

    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.conv1 = _conv(nf, gc)
        self.conv2 = _conv(nf + gc, gc)
        self.conv3 = _conv(nf + 2 * gc, gc)
        self.conv4 = _conv(nf + 3 * gc, gc)
        self.conv5 = _conv(nf + 4 * gc, nf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), NEGATIVE_SLOPE))
        return self.conv5(torch.cat(features, 1)) * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, scaled by 0.2, plus the input."""

    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(nf, gc)
        self.rdb2 = ResidualDenseBlock(nf, gc)
        self.rdb3 = ResidualDenseBlock(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * RESIDUAL_SCALE + x


def default_shuffle_factor(scale: int) -> int:
    """Real-ESRGAN's convention: 1× and 2× models pixel-unshuffle by 4 and 2, then upscale 4×."""
    return {1: 4, 2: 2}.get(scale, 1)


class RRDBNet(nn.Module):
    """ESRGAN's generator with BasicSR's parameter names.

    `in_nc` / `out_nc` are image channels; `scale` is the whole model's factor. With pixel
    unshuffle (`shuffle_factor` 2 or 4) `conv_first` sees `in_nc × shuffle²` channels and the net
    upsamples `scale × shuffle`, one nearest-neighbour 2× plus conv per step. `shuffle_factor=None`
    follows Real-ESRGAN; old 2× ESRGAN files have one upconv and `shuffle_factor=1`.
    """

    def __init__(
        self,
        in_nc: int = 3,
        out_nc: int = 3,
        nf: int = 64,
        nb: int = 23,
        gc: int = 32,
        scale: int = 4,
        shuffle_factor: int | None = None,
    ) -> None:
        super().__init__()
        shuffle = default_shuffle_factor(scale) if shuffle_factor is None else shuffle_factor
        if scale not in SCALES or shuffle not in SHUFFLE_FACTORS:
            raise ValueError(f"unsupported scale {scale} / pixel-unshuffle factor {shuffle}")
        self.in_nc, self.out_nc, self.nf, self.nb, self.gc = in_nc, out_nc, nf, nb, gc
        self.scale, self.shuffle_factor = scale, shuffle
        self.upsamples = int(math.log2(scale * shuffle))
        self.conv_first = _conv(in_nc * shuffle * shuffle, nf)
        self.body = nn.Sequential(*(RRDB(nf, gc) for _ in range(nb)))
        self.conv_body = _conv(nf, nf)
        for step in range(1, self.upsamples + 1):
            self.add_module(f"conv_up{step}", _conv(nf, nf))
        self.conv_hr = _conv(nf, nf)
        self.conv_last = _conv(nf, out_nc)

    @property
    def receptive_radius(self) -> int:
        """Input pixels of context that decide an output pixel (plus unshuffle alignment).

        Tiles whose overlap is at least this give exactly the untiled result. Real models have
        hundreds (Real-ESRGAN x4plus: ~350), but trained weights look far less far in practice,
        which is why a small overlap (Real-ESRGAN's tile_pad 10) already hides seams.
        """
        # +1 covers the rounding of nearest-neighbour upsampling at tile edges.
        feature_px = 3 + 15 * self.nb + sum(2.0**-k for k in range(1, self.upsamples + 1))
        feature_px += 2 * 2.0**-self.upsamples
        return math.ceil(feature_px * self.shuffle_factor) + self.shuffle_factor - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shuffle_factor > 1:
            x = F.pixel_unshuffle(x, self.shuffle_factor)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for step in range(1, self.upsamples + 1):
            conv = getattr(self, f"conv_up{step}")
            up = F.interpolate(feat, scale_factor=2, mode="nearest")
            feat = F.leaky_relu(conv(up), NEGATIVE_SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), NEGATIVE_SLOPE))


# --- key layouts -----------------------------------------------------------------------------

_OLD_RDB = re.compile(r"model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)")
_OLD_TRUNK = re.compile(r"model\.1\.sub\.(\d+)\.(weight|bias)")
_OLD_TOP = re.compile(r"model\.(\d+)\.(weight|bias)")
_TRUNK_RENAMES = (
    (re.compile(r"^RRDB_trunk\.(\d+)\.RDB([123])\."), r"body.\1.rdb\2."),
    (re.compile(r"^trunk_conv\."), "conv_body."),
    (re.compile(r"^upconv(\d)\."), r"conv_up\1."),
    (re.compile(r"^HRconv\."), "conv_hr."),
)
_NEW_BODY = re.compile(r"body\.(\d+)\.")
_NEW_UPCONV = re.compile(r"conv_up(\d)\.weight")


def _not_esrgan(problem: str) -> InvalidArgument:
    return InvalidArgument("model", f"not an ESRGAN-family model: {problem}")


def detect_layout(state: Mapping[str, object]) -> Layout:
    """Which naming a state dict uses; anything else is not an ESRGAN-family model."""
    if any(".conv1x1." in key for key in state):
        raise _not_esrgan("ESRGAN+ (conv1x1 blocks) is not supported")
    if "model.0.weight" in state and "model.1.sub.0.RDB1.conv1.0.weight" in state:
        return "old"
    if "conv_first.weight" in state and "RRDB_trunk.0.RDB1.conv1.weight" in state:
        return "trunk"
    if "conv_first.weight" in state and "body.0.rdb1.conv1.weight" in state:
        return "new"
    sample = ", ".join(sorted(state)[:4]) or "no tensors"
    raise _not_esrgan(f"unknown key layout (keys like {sample})")


def _old_top_indexes(rest: Mapping[str, object], nb: int) -> dict[str, int]:
    """Map each non-block key of an old-layout dict to its `model.N` index (1 for the trunk)."""
    indexes: dict[str, int] = {}
    for key in rest:
        trunk = _OLD_TRUNK.fullmatch(key)
        top = _OLD_TOP.fullmatch(key)
        if trunk and int(trunk[1]) == nb:
            indexes[key] = 1
        elif top and top[1] != "1":
            indexes[key] = int(top[1])
        else:
            raise _not_esrgan(f"unexpected key {key}")
    return indexes


def _old_index_names(indexes: set[int]) -> dict[int, str]:
    """Name the `model.N` layers: upconvs at 3, 6, 9…, then HR conv at 3n+2 and last at 3n+4."""
    last = max(indexes)
    upsamples, remainder = divmod(last - 4, 3)
    names = {0: "conv_first", 1: "conv_body", last - 2: "conv_hr", last: "conv_last"}
    names |= {3 * k: f"conv_up{k}" for k in range(1, upsamples + 1)}
    if remainder or upsamples < 0 or indexes != set(names):
        raise _not_esrgan(f"old-layout layer indexes {sorted(indexes)} fit no scale")
    return names


def _from_old(state: Mapping[str, Value]) -> dict[str, Value]:
    out: dict[str, Value] = {}
    rest: dict[str, Value] = {}
    blocks: set[int] = set()
    for key, tensor in state.items():
        match = _OLD_RDB.fullmatch(key)
        if match:
            block, rdb, conv, kind = match.groups()
            out[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = tensor
            blocks.add(int(block))
        else:
            rest[key] = tensor
    indexes = _old_top_indexes(rest, nb=max(blocks) + 1)
    names = _old_index_names(set(indexes.values()))
    for key, index in indexes.items():
        out[f"{names[index]}.{key.rsplit('.', 1)[1]}"] = rest[key]
    return out


def _from_trunk(state: Mapping[str, Value]) -> dict[str, Value]:
    out: dict[str, Value] = {}
    for key, tensor in state.items():
        for pattern, replacement in _TRUNK_RENAMES:
            key = pattern.sub(replacement, key)
        out[key] = tensor
    return out


def to_rrdbnet_keys(state: Mapping[str, Value]) -> dict[str, Value]:
    """Rename any supported layout to RRDBNet's own (BasicSR) parameter names (the values, be
    they tensors or shapes, are kept as they are)."""
    layout = detect_layout(state)
    if layout == "old":
        return _from_old(state)
    if layout == "trunk":
        return _from_trunk(state)
    return dict(state)


def to_layout(state: Mapping[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """RRDBNet's state dict written in another layout's names (the inverse of `to_rrdbnet_keys`)."""
    if layout == "new":
        return dict(state)
    ups = sum(1 for key in state if _NEW_UPCONV.fullmatch(key))
    nb = len({m[1] for key in state if (m := _NEW_BODY.match(key))})
    if layout == "trunk":
        pairs = [
            (r"^body\.(\d+)\.rdb([123])\.", r"RRDB_trunk.\1.RDB\2."),
            (r"^conv_body\.", "trunk_conv."),
            (r"^conv_up(\d)\.", r"upconv\1."),
            (r"^conv_hr\.", "HRconv."),
        ]
    else:
        pairs = [
            (r"^body\.(\d+)\.rdb([123])\.conv(\d)\.", r"model.1.sub.\1.RDB\2.conv\3.0."),
            (r"^conv_first\.", "model.0."),
            (r"^conv_body\.", f"model.1.sub.{nb}."),
            *((rf"^conv_up{k}\.", f"model.{3 * k}.") for k in range(1, ups + 1)),
            (r"^conv_hr\.", f"model.{3 * ups + 2}."),
            (r"^conv_last\.", f"model.{3 * ups + 4}."),
        ]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        for pattern, replacement in pairs:
            key = re.sub(pattern, replacement, key)
        out[key] = tensor
    return out


# --- building the network from a state dict --------------------------------------------------


def _conv_shape(shapes: Mapping[str, Shape], name: str) -> Shape:
    shape = shapes.get(f"{name}.weight")
    if shape is None:
        raise _not_esrgan(f"missing {name}.weight")
    if len(shape) != 4:
        raise _not_esrgan(f"{name}.weight has shape {tuple(shape)}, not a 2-D conv")
    return shape


def _shuffle_factor(first_in: int, out_nc: int) -> int:
    """Pixel-unshuffle shows as `conv_first` taking 4× or 16× the image channels."""
    for factor in (2, 4):
        if first_in == out_nc * factor * factor:
            return factor
    return 1


def _scale_and_shuffle(shapes: Mapping[str, Shape]) -> tuple[int, int]:
    """The model's scale and pixel-unshuffle factor, from RRDBNet-named shapes alone."""
    first_in = _conv_shape(shapes, "conv_first")[1]
    out_nc = _conv_shape(shapes, "conv_last")[0]
    upsamples = sum(1 for key in shapes if _NEW_UPCONV.fullmatch(key))
    shuffle = _shuffle_factor(first_in, out_nc)
    scale = 2**upsamples // shuffle
    if scale not in SCALES or scale * shuffle != 2**upsamples:
        raise _not_esrgan(f"{upsamples} upconvs with pixel-unshuffle {shuffle} is no known scale")
    return scale, shuffle


def native_scale(shapes: Mapping[str, Shape]) -> int:
    """The scale a model file upscales by, from its tensors' names and shapes (any layout)."""
    return _scale_and_shuffle(to_rrdbnet_keys(shapes))[0]


def build_rrdbnet(state: Mapping[str, torch.Tensor]) -> RRDBNet:
    """An RRDBNet sized from, and loaded with, a state dict in RRDBNet's own names."""
    shapes = {key: tuple(tensor.shape) for key, tensor in state.items()}
    scale, shuffle = _scale_and_shuffle(shapes)
    first = shapes["conv_first.weight"]
    out_nc = shapes["conv_last.weight"][0]
    gc = _conv_shape(shapes, "body.0.rdb1.conv1")[0]
    nb = len({m[1] for key in state if (m := _NEW_BODY.match(key))})
    in_nc = first[1] // (shuffle * shuffle)
    model = RRDBNet(in_nc, out_nc, first[0], nb, gc, scale, shuffle)
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise _not_esrgan(detail[:300]) from exc
    return model.eval()


# --- files -----------------------------------------------------------------------------------


def _tensors(obj: Any) -> dict[str, torch.Tensor]:
    """The tensors of a bare state dict or one inside `params_ema` / `params` / `state_dict`,
    as stored (not read, where `obj` came memory-mapped)."""
    for _ in range(MAX_NESTING):  # bounded: a pickle can make a dict that contains itself
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in CONTAINERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise _not_esrgan("the file holds no state dict")
    tensors = {
        key.removeprefix("module."): value
        for key, value in obj.items()
        if isinstance(key, str) and isinstance(value, torch.Tensor)
    }
    if any(not tensor.is_floating_point() for tensor in tensors.values()):
        raise _not_esrgan("it holds non-floating-point tensors")
    return tensors


def _unwrap(obj: Any) -> dict[str, torch.Tensor]:
    """The float32 tensors of a bare or wrapped state dict (see `_tensors`)."""
    return {key: tensor.float() for key, tensor in _tensors(obj).items()}


def _read_pickle(path: Path) -> Any:
    return load_weights_only(path, "model")


def _map_pickle(path: Path) -> Any:
    """A pickle with its tensors memory-mapped, not read (zip-format files; still weights only).
    Anything else (the old format, a damaged or code-carrying file) goes to `_read_pickle`,
    which reads it whole or refuses it with its own message."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except Exception:  # the unpickler's failures have no common type (see load_weights_only)
        return _read_pickle(path)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A model file's float32 tensors, unwrapped from its container; nothing in it is run."""
    if not path.is_file():
        raise NotFound("upscaler", path.name)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _unwrap(load_safetensors(path, "model"))
    if suffix in PICKLE_SUFFIXES:
        return _unwrap(_read_pickle(path))
    raise InvalidArgument("model", f"unsupported upscaler file type {suffix or '(none)'}")


def read_native_scale(path: Path) -> int:
    """A model file's scale without loading its weights: the shapes come from a safetensors
    header, or from a pickle memory-mapped (zip-format `.pth`; the old format can only be read
    whole). Listings call this, so it must stay cheap for 60 MB files."""
    if not path.is_file():
        raise NotFound("upscaler", path.name)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as file:
                names = file.keys()  # a safe_open file is not iterable
                shapes = {key: file.get_slice(key).get_shape() for key in names}
        except (SafetensorError, OSError, ValueError) as exc:
            raise InvalidArgument("model", f"corrupt .safetensors file: {exc}") from exc
        return native_scale(shapes)
    if suffix in PICKLE_SUFFIXES:
        tensors = _tensors(_map_pickle(path))
        return native_scale({key: tuple(tensor.shape) for key, tensor in tensors.items()})
    raise InvalidArgument("model", f"unsupported upscaler file type {suffix or '(none)'}")


def load_upscaler(path: Path) -> Upscaler:
    """Load an ESRGAN / BSRGAN / Real-ESRGAN `.pth` or `.safetensors` file onto the CPU."""
    model = build_rrdbnet(to_rrdbnet_keys(read_state_dict(path)))
    if model.in_nc != 3 or model.out_nc != 3:
        raise InvalidArgument(
            "model", f"only RGB models are supported; this one maps {model.in_nc}→{model.out_nc}"
        )
    return Upscaler(name=path.stem, scale=model.scale, model=model)


# --- running ---------------------------------------------------------------------------------


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _tiled(
    model: RRDBNet, image: torch.Tensor, tile: int, overlap: int, scale: int
) -> torch.Tensor:
    """Run `model` tile by tile; each tile sees `overlap` pixels of context that are cropped away.

    `image` is (1, C, H, W) on the CPU with H and W multiples of the unshuffle factor, as are
    `tile` and `overlap`, so every tile meets the same unshuffle grid as the whole image would.
    """
    param = next(model.parameters())
    _, _, height, width = image.shape
    out = torch.empty(1, model.out_nc, height * scale, width * scale)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            ctop, cleft = max(top - overlap, 0), max(left - overlap, 0)
            cbottom, cright = min(bottom + overlap, height), min(right + overlap, width)
            piece = image[:, :, ctop:cbottom, cleft:cright].to(param.device, param.dtype)
            result = model(piece).float().cpu()
            rows = slice((top - ctop) * scale, (bottom - ctop) * scale)
            cols = slice((left - cleft) * scale, (right - cleft) * scale)
            out[:, :, top * scale : bottom * scale, left * scale : right * scale] = result[
                :, :, rows, cols
            ]
    return out


@dataclass
class Upscaler:
    """A loaded ESRGAN-family model. Move `model` to a GPU (and half precision) as wanted."""

    name: str
    scale: int
    model: RRDBNet

    def upscale_tensor(
        self, pixels: torch.Tensor, *, tile: int = 256, overlap: int = 16
    ) -> torch.Tensor:
        """(1, C, H, W) floats in [0, 1] → (1, C, H·scale, W·scale), unclamped, on the CPU.

        `tile` ≤ 0 runs the whole image at once. Sizes are padded (edge pixels repeated) to the
        pixel-unshuffle factor and the padding cropped from the result.
        """
        if overlap < 0:
            raise InvalidArgument("overlap", "must be zero or more pixels")
        align = self.model.shuffle_factor
        _, _, height, width = pixels.shape
        padded_h, padded_w = _round_up(height, align), _round_up(width, align)
        if (padded_h, padded_w) != (height, width):
            pad = (0, padded_w - width, 0, padded_h - height)
            pixels = F.pad(pixels, pad, mode="replicate")
        tile = _round_up(tile, align) if tile > 0 else max(padded_h, padded_w)
        with torch.inference_mode():
            out = _tiled(
                self.model, pixels.float().cpu(), tile, _round_up(overlap, align), self.scale
            )
        return out[:, :, : height * self.scale, : width * self.scale]

    def upscale(self, image: Image.Image, *, tile: int = 256, overlap: int = 16) -> Image.Image:
        """RGB image in, RGB image exactly `scale` times larger out."""
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        pixels = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
        out = self.upscale_tensor(pixels, tile=tile, overlap=overlap)
        out = out.squeeze(0).clamp(0, 1).permute(1, 2, 0).mul(255.0).round()
        return Image.fromarray(out.to(torch.uint8).numpy(), mode="RGB")


# --- Lanczos and Nearest ---------------------------------------------------------------------


def resize_to(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize with Pillow's Lanczos filter (the built-in "Lanczos" upscaler)."""
    if width < 1 or height < 1:
        raise InvalidArgument("size", f"{width}x{height} must be at least 1x1")
    return image.resize((width, height), Image.Resampling.LANCZOS)


def lanczos(image: Image.Image, scale: float) -> Image.Image:
    """Scale both sides by `scale` (rounded, at least 1 pixel) with Lanczos."""
    return resize_to(image, *_scaled_size(image, scale))


def nearest(image: Image.Image, scale: float) -> Image.Image:
    """Scale both sides by `scale` (rounded, at least 1 pixel), each new pixel a copy of the
    nearest old one: A1111's "Nearest", which keeps hard edges (pixel art)."""
    return image.resize(_scaled_size(image, scale), Image.Resampling.NEAREST)


def _scaled_size(image: Image.Image, scale: float) -> tuple[int, int]:
    if not scale > 0:
        raise InvalidArgument("scale", "must be greater than zero")
    return max(1, round(image.width * scale)), max(1, round(image.height * scale))


# --- test factory ----------------------------------------------------------------------------


def make_esrgan_file(
    path: Path,
    *,
    layout: Layout,
    scale: int = 4,
    nf: int = 8,
    nb: int = 2,
    seed: int = 0,
    container: str | None = None,
    shuffle_factor: int | None = None,
) -> Path:
    """Write a random-weight ESRGAN-family model in `layout`'s key names (for tests).

    A `.safetensors` suffix writes safetensors (no container possible); anything else is
    `torch.save` of a plain dict of tensors, inside `{container: ...}` when given.
    The same `seed` and sizes give the same weights in every layout.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RRDBNet(3, 3, nf, nb, 32, scale, shuffle_factor)
    state = to_layout({k: v.detach().clone() for k, v in model.state_dict().items()}, layout)
    if path.suffix == ".safetensors":
        if container is not None:
            raise ValueError("a .safetensors file has no container")
        save_file(state, str(path))
    else:
        torch.save(state if container is None else {container: state}, path)
    return path
