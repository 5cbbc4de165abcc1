"""Inpaint, A1111 style: repaint the masked area (mask blur, masked content, only masked at
full resolution), then overlay the original outside the mask.

A regular 4-channel checkpoint keeps the unmasked latents by blending them back every step; a
9-channel inpainting checkpoint takes the mask and the masked image's latents as extra U-Net
input (`Start.keep`, `Start.unet_extra`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import get_args

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from services.common.generation.tasks import (
    MAX_MASK_BLUR,
    MAX_ONLY_MASKED_PADDING,
    InpaintFill,
    ResizeMode,
)
from services.generator.modes.checks import check_choice, check_range, check_size, check_unit
from services.generator.modes.denoise import denoise
from services.generator.modes.images import (
    RESIZE_MODES,
    blur_mask,
    crop_region,
    fill_masked,
    overlay,
    repaint_mask,
    resize_image,
    to_rgb,
)
from services.generator.modes.sampling import Sampling, Start, initial_noise
from services.generator.modes.vae import (
    decode,
    encode,
    inpaint_extra,
    is_inpainting_model,
    pixel_tensor,
    shape_of,
)

INPAINT_FILLS: tuple[str, ...] = get_args(InpaintFill)


@dataclass(frozen=True)
class _InpaintArea:
    """What the sampler sees (`work_*`, width×height) and how it goes back into `original`."""

    original: Image.Image
    overlay: Image.Image
    work_image: Image.Image
    work_mask: Image.Image
    crop: tuple[int, int, int, int] | None


def inpaint(
    pipe: StableDiffusionPipeline,
    s: Sampling,
    init: Image.Image,
    mask: Image.Image,
    *,
    strength: float = 0.75,
    mask_blur: int | tuple[int, int] = 4,
    fill: InpaintFill = "original",
    only_masked: bool = False,
    padding: int = 32,
    invert: bool = False,
    width: int,
    height: int,
    resize_mode: ResizeMode = "just_resize",
    initial_noise_multiplier: float = 1.0,
) -> list[Image.Image]:
    """Repaint where `mask` is white (black with `invert`), A1111 style.

    The mask is Gaussian-blurred by `mask_blur` (one radius, or horizontal and vertical).
    `only_masked` crops the mask's bounding box plus `padding`, widened to width:height,
    samples that crop at width×height and pastes it back, so the output has the init image's
    size; otherwise the image is fitted to width×height by `resize_mode`. Always finishes
    with A1111's overlay: the original composited back outside the blurred mask, so pixels
    where it is 0 are exactly the input's. `resize_mode` is img2img's but for latent_upscale;
    `initial_noise_multiplier` scales the noise added to the init latents, as in img2img.
    """
    # 1. Check the arguments.
    blur = mask_blur if isinstance(mask_blur, tuple) else (mask_blur, mask_blur)
    _check_inpaint(strength, blur, fill, padding, width, height, resize_mode)
    check_range("img2img.initial_noise_multiplier", initial_noise_multiplier, 0.0, 1.5)
    # 2. The repaint mask, blurred, and the area the sampler works on: the image fitted to
    #    width×height, or the masked region's crop at width×height.
    image = to_rgb(init)
    repaint = repaint_mask(image, mask, invert)
    area = _inpaint_area(image, repaint, blur, only_masked, padding, (width, height), resize_mode)
    # 3. Strength 0 changes nothing: the original, once per seed.
    if strength == 0:
        return [area.original.copy() for _ in s.seeds]
    # 4. Where the masked area starts from (masked content), encoded.
    work = fill_masked(area.work_image, area.work_mask) if fill == "fill" else area.work_image
    start = _inpaint_start(pipe, s, work, area.work_mask, fill, strength)
    start = replace(start, noise_multiplier=initial_noise_multiplier)
    assert start.latents is not None
    # 5. Denoise, keeping the unmasked latents.
    latents = denoise(pipe, s, shape_of(start.latents), start)
    # 6. Decode, and paste back over the original outside the mask.
    return [_paste_back(picture, area) for picture in decode(pipe, latents)]


def _check_inpaint(
    strength: float,
    mask_blur: tuple[int, int],
    fill: str,
    padding: int,
    width: int,
    height: int,
    resize_mode: str,
) -> None:
    check_unit("img2img.denoising_strength", strength)
    same = mask_blur[0] == mask_blur[1]
    check_range(
        "inpaint.mask_blur" if same else "inpaint.mask_blur_x", mask_blur[0], 0, MAX_MASK_BLUR
    )
    check_range("inpaint.mask_blur_y", mask_blur[1], 0, MAX_MASK_BLUR)
    check_choice("inpaint.fill", fill, INPAINT_FILLS)
    check_range("inpaint.only_masked_padding", padding, 0, MAX_ONLY_MASKED_PADDING)
    check_size(width, height)
    check_choice("img2img.resize_mode", resize_mode, RESIZE_MODES[:3])


def _inpaint_area(
    image: Image.Image,
    repaint: Image.Image,
    mask_blur: tuple[int, int],
    only_masked: bool,
    padding: int,
    size: tuple[int, int],
    resize_mode: str,
) -> _InpaintArea:
    blurred = blur_mask(repaint, *mask_blur)
    width, height = size
    if only_masked:
        box = crop_region(blurred.getbbox() or repaint.getbbox(), padding, size, image.size)
        work_image = resize_image(image.crop(box), "resize_and_fill", width, height)
        work_mask = resize_image(blurred.crop(box), "resize_and_fill", width, height)
        return _InpaintArea(image, blurred, work_image, work_mask, box)
    fitted = resize_image(image, resize_mode, width, height)
    fitted_mask = resize_image(blurred, resize_mode, width, height)
    overlay_mask = fitted_mask.point(lambda v: min(255, 2 * v))
    return _InpaintArea(fitted, overlay_mask, fitted, fitted_mask, None)


def _inpaint_start(
    pipe: StableDiffusionPipeline,
    s: Sampling,
    work: Image.Image,
    work_mask: Image.Image,
    fill: str,
    strength: float,
) -> Start:
    latents = encode(pipe, work)
    shape = shape_of(latents)
    repaint = _latent_mask(work_mask, shape).to(latents)
    batch = latents.repeat(s.batch_size, 1, 1, 1)
    if fill == "latent_noise":
        noise = initial_noise(shape, s.seeds, s.subseeds, s.subseed_strength).to(batch)
        batch = batch * (1 - repaint) + noise * repaint
    elif fill == "latent_nothing":
        batch = batch * (1 - repaint)
    if not is_inpainting_model(pipe):
        return Start(latents=batch, strength=strength, keep=1 - repaint)
    binary = torch.from_numpy(np.asarray(work_mask, dtype=np.float32) / 255).round()
    extra = inpaint_extra(pipe, pixel_tensor(work), binary[None, None])
    return Start(latents=batch, strength=strength, unet_extra=extra.repeat(s.batch_size, 1, 1, 1))


def _latent_mask(mask: Image.Image, shape: tuple[int, int, int]) -> torch.Tensor:
    """[1, 1, h, w] of 0/1: the blurred mask at latent size, rounded (A1111's latent mask)."""
    small = mask.resize((shape[2], shape[1]), Image.Resampling.BICUBIC)
    values = np.round(np.asarray(small, dtype=np.float32) / 255)
    return torch.from_numpy(values)[None, None]


def _paste_back(generated: Image.Image, area: _InpaintArea) -> Image.Image:
    """The generated picture put back: into its crop of the original when only masked, then
    A1111's overlay of the original outside the mask."""
    if area.crop is not None:
        x1, y1, x2, y2 = area.crop
        canvas = area.original.copy()
        canvas.paste(resize_image(generated, "crop_and_resize", x2 - x1, y2 - y1), (x1, y1))
        generated = canvas
    return overlay(generated, area.original, area.overlay)
