"""txt2img: one image per seed from pure noise."""

from __future__ import annotations

from diffusers import StableDiffusionPipeline
from PIL import Image

from services.generator.modes.checks import check_size
from services.generator.modes.denoise import denoise
from services.generator.modes.sampling import Sampling
from services.generator.modes.vae import decode, latent_shape


def txt2img(
    pipe: StableDiffusionPipeline, s: Sampling, width: int, height: int
) -> list[Image.Image]:
    """One image per seed at width×height."""
    # 1. Check the size.
    check_size(width, height)
    # 2. Denoise latents of that size from the seeds' noise.
    latents = denoise(pipe, s, latent_shape(pipe, width, height))
    # 3. Decode.
    return decode(pipe, latents)
