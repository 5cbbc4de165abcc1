"""A1111's hi-res fix: txt2img, an upscale (of the latents, or of the decoded pixels), then a
second img2img pass of exactly its own steps."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from PIL import Image

from services.common.errors import InvalidArgument
from services.generator.modes.checks import MAX_SIDE, check_resize, check_size, check_unit
from services.generator.modes.denoise import denoise
from services.generator.modes.images import center_crop, to_rgb
from services.generator.modes.sampling import Sampling, Start
from services.generator.modes.vae import (
    LATENT_FACTOR,
    decode,
    encode,
    floor8,
    latent_shape,
    shape_of,
)

PixelUpscaler = Callable[[Image.Image, int, int], Image.Image]
"""Upscales an image to exactly (width, height)."""
LATENT_UPSCALERS: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
"""A1111's latent upscale modes: name -> (interpolation, antialias). Antialiasing changes
only a downscale, and a hi-res fix scales up: bilinear's antialiased mode differs from the
plain one by rounding alone (bicubic's uses another kernel); both are A1111's names, which
its clients send and its infotexts record."""


def hires_fix(
    pipe: StableDiffusionPipeline,
    first: Sampling,
    second: Sampling,
    *,
    width: int,
    height: int,
    scale: float = 2.0,
    resize_x: int = 0,
    resize_y: int = 0,
    upscaler: str | PixelUpscaler = "Latent",
    denoising_strength: float = 0.7,
) -> list[Image.Image]:
    """A1111 hi-res fix: txt2img at width×height, upscale, then an img2img pass with `second`.

    The target is width×height × `scale` (rounded down to multiples of 8), or resize_x×resize_y
    (one of them 0 keeps the aspect ratio; both given: upscale to cover, then crop the centre).
    A latent upscaler (a name of `LATENT_UPSCALERS`) interpolates the latents; a callable
    upscales the decoded pixels, which are encoded again. The second pass runs exactly
    `second.steps` steps.
    """
    # 1. Check the arguments; the size to upscale to and the size to end at.
    check_size(width, height)
    check_unit("hires.denoising_strength", denoising_strength)
    cover, target = hires_sizes(width, height, scale, resize_x, resize_y)
    _check_upscaler(upscaler)
    if second.batch_size != first.batch_size:
        raise InvalidArgument("hires.seed", "the second pass needs one seed per image")
    # 2. The first pass: txt2img latents at width×height.
    latents = denoise(pipe, first, latent_shape(pipe, width, height))
    # 3. Upscale to cover the target: the latents, or the decoded pixels (encoded again).
    if callable(upscaler):
        big = [_upscale_to(upscaler, image, cover) for image in decode(pipe, latents)]
        if denoising_strength == 0:
            return [center_crop(image, target) for image in big]
        upscaled = torch.cat([encode(pipe, image) for image in big])
    else:
        upscaled = _upscale_latents(latents, LATENT_UPSCALERS[upscaler], cover)
    # 4. Crop the centre to the target size; strength 0 ends here.
    upscaled = _center_crop_latents(upscaled, target)
    if denoising_strength == 0:
        return decode(pipe, upscaled)
    # 5. The second pass, from the upscaled latents.
    start = Start(latents=upscaled, strength=denoising_strength, exact_steps=True)
    latents = denoise(pipe, second, shape_of(upscaled), start)
    # 6. Decode.
    return decode(pipe, latents)


def hires_sizes(
    width: int, height: int, scale: float, resize_x: int = 0, resize_y: int = 0
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(size to upscale to, final size) of a hi-res fix as A1111 computes them; multiples of 8."""
    if not resize_x and not resize_y:
        if not 1 < scale <= 4:
            raise InvalidArgument("hires.scale", "must be more than 1 and at most 4")
        size = (floor8(width * scale), floor8(height * scale))
        return _checked_hires(size, size)
    check_resize("hires.resize_x", resize_x)
    check_resize("hires.resize_y", resize_y)
    if not resize_y:
        size = (resize_x, floor8(resize_x * height // width))
        return _checked_hires(size, size)
    if not resize_x:
        size = (floor8(resize_y * width // height), resize_y)
        return _checked_hires(size, size)
    if width / height < resize_x / resize_y:
        cover = (resize_x, floor8(resize_x * height // width))
    else:
        cover = (floor8(resize_y * width // height), resize_y)
    return _checked_hires(cover, (resize_x, resize_y))


def _checked_hires(
    cover: tuple[int, int], target: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    if max(cover) > MAX_SIDE:
        raise InvalidArgument("hires.scale", f"the upscaled size must be at most {MAX_SIDE}")
    return cover, target


def _check_upscaler(upscaler: str | PixelUpscaler) -> None:
    if not callable(upscaler) and upscaler not in LATENT_UPSCALERS:
        raise InvalidArgument("hires.upscaler", f"unknown upscaler {upscaler!r}; see ListUpscalers")


def _upscale_latents(
    latents: torch.Tensor, mode: tuple[str, bool], size: tuple[int, int]
) -> torch.Tensor:
    """The latents interpolated to `size` (pixels). The antialiased modes interpolate in
    float32: PyTorch's CPU kernels for them take no bfloat16."""
    interpolation, antialias = mode
    latent_size = (size[1] // LATENT_FACTOR, size[0] // LATENT_FACTOR)
    if not antialias:
        return F.interpolate(latents, size=latent_size, mode=interpolation, antialias=False)
    wide = F.interpolate(latents.float(), size=latent_size, mode=interpolation, antialias=True)
    return wide.to(latents.dtype)


def _upscale_to(upscale: PixelUpscaler, image: Image.Image, size: tuple[int, int]) -> Image.Image:
    result = to_rgb(upscale(image, *size))
    if result.size != size:
        result = result.resize(size, Image.Resampling.LANCZOS)
    return result


def _center_crop_latents(latents: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop to size (pixels) around the centre, as A1111's truncate_x/y does."""
    width, height = size[0] // LATENT_FACTOR, size[1] // LATENT_FACTOR
    left = (latents.shape[3] - width) // 2
    top = (latents.shape[2] - height) // 2
    return latents[:, :, top : top + height, left : left + width]
