"""Image operations of the recipes: A1111's resize modes, masks (blur, fill, the repaint area)
and the overlay that pastes a repainted picture back over its original."""

from __future__ import annotations

import math
from typing import get_args

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from services.common.errors import InvalidArgument
from services.common.generation.tasks import ResizeMode

RESIZE_MODES: tuple[str, ...] = get_args(ResizeMode)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB; transparent pixels are flattened onto white, as A1111's img2img does by default."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_image(image: Image.Image, mode: str, width: int, height: int) -> Image.Image:
    """Fit `image` to width×height like A1111's `images.resize_image` (Lanczos).

    just_resize stretches; crop_and_resize keeps the aspect ratio, covers and crops the centre;
    resize_and_fill keeps it, fits inside and fills the bands by stretching the edge pixels.
    """
    if image.size == (width, height):
        return image.copy()
    if mode == "crop_and_resize":
        return _crop_and_resize(image, width, height)
    if mode == "resize_and_fill":
        return _resize_and_fill(image, width, height)
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _crop_and_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    wider = width / height > image.width / image.height
    scaled_w = width if wider else max(1, image.width * height // image.height)
    scaled_h = max(1, image.height * width // image.width) if wider else height
    scaled = image.resize((scaled_w, scaled_h), Image.Resampling.LANCZOS)
    left, top = scaled_w // 2 - width // 2, scaled_h // 2 - height // 2
    return scaled.crop((left, top, left + width, top + height))


def _resize_and_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    narrower = width / height < image.width / image.height
    scaled_w = width if narrower else max(1, image.width * height // image.height)
    scaled_h = max(1, image.height * width // image.width) if narrower else height
    scaled = np.asarray(image.resize((scaled_w, scaled_h), Image.Resampling.LANCZOS))
    left, top = width // 2 - scaled_w // 2, height // 2 - scaled_h // 2
    pads = [(top, height - scaled_h - top), (left, width - scaled_w - left)]
    pads += [(0, 0)] * (scaled.ndim - 2)
    return Image.fromarray(np.pad(scaled, pads, mode="edge"), image.mode)


def center_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The centre of `image` at `size` (no larger than the image)."""
    left, top = (image.width - size[0]) // 2, (image.height - size[1]) // 2
    return image.crop((left, top, left + size[0], top + size[1]))


def pad_to_multiple(image: Image.Image, multiple: int) -> Image.Image:
    """RGB `image` grown right and down to multiples of `multiple`, edge pixels repeated."""
    width = max(multiple, math.ceil(image.width / multiple) * multiple)
    height = max(multiple, math.ceil(image.height / multiple) * multiple)
    if (width, height) == image.size:
        return image
    pads = [(0, height - image.height), (0, width - image.width), (0, 0)]
    return Image.fromarray(np.pad(np.asarray(image), pads, mode="edge"), "RGB")


def repaint_mask(image: Image.Image, mask: Image.Image, invert: bool) -> Image.Image:
    """The mask as L (255 = repaint); a mask with transparency is read from its alpha (A1111)."""
    if mask.size != image.size:
        rule = f"must be the same size as the image ({image.width}x{image.height})"
        raise InvalidArgument("inpaint.mask", rule)
    gray = _alpha_mask(mask)
    if gray is None:
        gray = mask.convert("L")
    if invert:
        gray = ImageOps.invert(gray)
    if gray.getbbox() is None:
        painted = "black" if invert else "white"
        raise InvalidArgument("inpaint.mask", f"marks nothing to repaint: paint the area {painted}")
    return gray


def _alpha_mask(mask: Image.Image) -> Image.Image | None:
    if mask.mode not in ("RGBA", "LA", "PA") and "transparency" not in mask.info:
        return None
    alpha = mask.convert("RGBA").getchannel("A")
    if alpha.getextrema() == (255, 255):
        return None
    return alpha.point(lambda v: 255 if v > 128 else 0)


def blur_mask(mask: Image.Image, radius: float, radius_y: float | None = None) -> Image.Image:
    """A1111's mask blur: a Gaussian per axis (horizontal `radius`, vertical `radius_y`,
    default the same), sigma = radius, kernel 2·int(2.5·radius+0.5)+1.

    Borders are mirrored (OpenCV's default). Pixels farther than the kernel's half width from
    any painted pixel stay exactly 0.
    """
    values = np.asarray(mask.convert("L"), dtype=np.float32)
    values = _gaussian_along(values, radius, axis=1)
    values = _gaussian_along(values, radius if radius_y is None else radius_y, axis=0)
    blurred = np.clip(np.round(values), 0, 255).astype(np.uint8)
    return Image.fromarray(blurred, "L")


def _gaussian_along(values: np.ndarray, radius: float, axis: int) -> np.ndarray:
    """`values` [h, w] blurred along rows (axis 1) or columns (axis 0), borders mirrored."""
    if radius <= 0:
        return values
    half = int(2.5 * radius + 0.5)
    offsets = torch.arange(-half, half + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2.0 * radius**2))
    kernel /= kernel.sum()
    widths = [(0, 0), (0, 0)]
    widths[axis] = (half, half)
    padded = torch.from_numpy(np.pad(values, widths, mode="reflect"))[None, None]
    shape = (1, 1, 1, -1) if axis == 1 else (1, 1, -1, 1)
    return F.conv2d(padded, kernel.view(shape))[0, 0].numpy()


def crop_region(
    bbox: tuple[int, int, int, int] | None,
    padding: int,
    processing: tuple[int, int],
    image_size: tuple[int, int],
) -> tuple[int, int, int, int]:
    """The masked bounding box plus padding, widened to the processing aspect ratio (A1111)."""
    assert bbox is not None
    image_w, image_h = image_size
    x1, y1, x2, y2 = bbox
    x1, y1 = max(x1 - padding, 0), max(y1 - padding, 0)
    x2, y2 = min(x2 + padding, image_w), min(y2 + padding, image_h)
    ratio = processing[0] / processing[1]
    if (x2 - x1) / (y2 - y1) > ratio:
        y1, y2 = _widen(y1, y2, int((x2 - x1) / ratio) - (y2 - y1), image_h)
    else:
        x1, x2 = _widen(x1, x2, int((y2 - y1) * ratio) - (x2 - x1), image_w)
    return x1, y1, x2, y2


def _widen(low: int, high: int, extra: int, limit: int) -> tuple[int, int]:
    """Grow [low, high) by `extra` around its centre, shifted and clipped to stay in [0, limit)."""
    low, high = low - extra // 2, high + extra - extra // 2
    if high > limit:
        low, high = low - (high - limit), limit
    if low < 0:
        low, high = 0, min(high - low, limit)
    return low, high


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111 "fill": the masked area starts from the blurred colours around it.

    Done as push-pull (a weighted image pyramid), which reaches into large holes in linear time.
    """
    rgb = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    keep = 1 - torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None] / 255
    around = _push_pull(rgb * keep, keep)
    filled = rgb * keep + around * (1 - keep)
    array = filled[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(array, "RGB")


def _push_pull(weighted: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    estimate = weighted / weight.clamp_min(1e-6)
    if min(weight.shape[-2:]) <= 1 or bool((weight >= 1).all()):
        return estimate
    coarse = _push_pull(
        F.avg_pool2d(weighted, 2, ceil_mode=True), F.avg_pool2d(weight, 2, ceil_mode=True)
    )
    smooth = F.interpolate(coarse, size=weight.shape[-2:], mode="bilinear", align_corners=False)
    confidence = weight.clamp(0, 1)
    return estimate * confidence + smooth * (1 - confidence)


def overlay(generated: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's apply_overlay: the original where the mask is 0, the new image where it is 255."""
    alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255
    new = np.asarray(generated.convert("RGB"), dtype=np.float32)
    old = np.asarray(original, dtype=np.float32)
    mixed = np.rint(old * (1 - alpha) + new * alpha)
    return Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8), "RGB")
