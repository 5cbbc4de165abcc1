"""Fooocus Vary: an img2img of the source at its own size, subtle or strong."""

from __future__ import annotations

from diffusers import StableDiffusionPipeline
from PIL import Image

from services.common.errors import InvalidArgument
from services.common.generation.tasks import VARIATION_STRENGTHS, VariationStrength
from services.generator.modes.images import to_rgb
from services.generator.modes.img2img import img2img
from services.generator.modes.sampling import Sampling
from services.generator.modes.vae import floor8


def variation(
    pipe: StableDiffusionPipeline,
    s: Sampling,
    source: Image.Image,
    *,
    strength: VariationStrength,
) -> list[Image.Image]:
    """Fooocus Vary: img2img of `source` at denoising 0.5 (subtle) or 0.85 (strong), its size.

    A size that is not a multiple of 8 is sampled at the multiple below and resized back.
    """
    # 1. Check the strength.
    if strength not in VARIATION_STRENGTHS:
        raise InvalidArgument("variation.strength", "must be subtle or strong")
    # 2. The source's size on the latent grid.
    image = to_rgb(source)
    width, height = floor8(image.width), floor8(image.height)
    # 3. img2img at the strength's denoising.
    results = img2img(
        pipe, s, image, strength=VARIATION_STRENGTHS[strength], width=width, height=height
    )
    # 4. Back to the source's own size.
    return [
        r if r.size == image.size else r.resize(image.size, Image.Resampling.LANCZOS)
        for r in results
    ]
