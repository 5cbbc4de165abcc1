"""img2img: one image per seed from an init image, fitted by A1111's resize modes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from PIL import Image

from services.common.generation.tasks import ResizeMode
from services.generator.modes.checks import check_choice, check_range, check_size, check_unit
from services.generator.modes.denoise import denoise
from services.generator.modes.images import RESIZE_MODES, resize_image, to_rgb
from services.generator.modes.sampling import Sampling, Start
from services.generator.modes.vae import LATENT_FACTOR, decode, encode, floor8, shape_of


def img2img(
    pipe: StableDiffusionPipeline,
    s: Sampling,
    init: Image.Image,
    *,
    strength: float,
    width: int,
    height: int,
    resize_mode: ResizeMode = "just_resize",
    initial_noise_multiplier: float = 1.0,
) -> list[Image.Image]:
    """One image per seed from `init`, fitted to width×height by `resize_mode`.

    The per-seed CPU noise of `initial_noise` is added to the init latents at the strength's
    first timestep (see `denoise`). Strength 0 returns the fitted image untouched.
    """
    # 1. Check the arguments.
    check_unit("img2img.denoising_strength", strength)
    check_size(width, height)
    check_choice("img2img.resize_mode", resize_mode, RESIZE_MODES)
    check_range("img2img.initial_noise_multiplier", initial_noise_multiplier, 0.0, 1.5)
    image = to_rgb(init)
    # 2. Strength 0 changes nothing: the fitted image, once per seed.
    if strength == 0:
        mode = "just_resize" if resize_mode == "latent_upscale" else resize_mode
        return [resize_image(image, mode, width, height) for _ in s.seeds]
    # 3. Encode the image fitted to width×height (or encode, then upscale the latents).
    latents = _init_latents(pipe, image, resize_mode, width, height)
    # 4. Denoise from those latents, noised to the strength's first timestep.
    start = Start(
        latents=latents.repeat(s.batch_size, 1, 1, 1),
        strength=strength,
        noise_multiplier=initial_noise_multiplier,
    )
    latents = denoise(pipe, s, shape_of(latents), start)
    # 5. Decode.
    return decode(pipe, latents)


def _init_latents(
    pipe: StableDiffusionPipeline, image: Image.Image, mode: str, width: int, height: int
) -> torch.Tensor:
    """[1, C, h, w]: the image fitted by `mode`, encoded; for latent_upscale, the image encoded
    at its own size (on the latent grid) and its latents interpolated to width×height."""
    if mode != "latent_upscale":
        return encode(pipe, resize_image(image, mode, width, height))
    own_size = (floor8(image.width), floor8(image.height))
    if image.size != own_size:
        image = image.resize(own_size, Image.Resampling.LANCZOS)
    latents = encode(pipe, image)
    size = (height // LATENT_FACTOR, width // LATENT_FACTOR)
    return F.interpolate(latents, size=size, mode="bilinear")
