"""Image-making modes over a loaded SD 1.x pipeline, with A1111's conventions.

txt2img, img2img (A1111 resize modes), inpaint (mask blur, masked content, only-masked at full
resolution, the final overlay), hi-res fix, tiled SD upscale, Fooocus-style variations and
A1111's cheap latent preview. Transport-free: conditioning comes in as embeddings inside a
`Sampling`, images go out as RGB PIL images, bad arguments raise `InvalidArgument`.

One stage per module, as diffusers' `modular_pipelines/` has them, and one recipe per mode on
those stages, each reading as numbered steps:

- `sampling`: the `Sampling` of a batch, where a run `Start`s, the seeds' initial noise and
  step noise generators;
- `denoise`: the one denoising loop every mode runs (why our own loop: see there);
- `vae`: encoding and decoding, latent shapes, the latent previews;
- `images`: resize modes, masks, blur, fill, the overlay;
- `checks`: argument checks that name the request's fields;
- the recipes: `txt2img`, `img2img`, `inpaint`, `hires` (hi-res fix), `upscale` (tiled
  refine), `variation`.
"""

from services.generator.modes.checks import MAX_SIDE
from services.generator.modes.hires import LATENT_UPSCALERS, PixelUpscaler, hires_fix, hires_sizes
from services.generator.modes.images import RESIZE_MODES, blur_mask, resize_image
from services.generator.modes.img2img import img2img
from services.generator.modes.inpaint import INPAINT_FILLS, inpaint
from services.generator.modes.sampling import Sampling, Start, initial_noise
from services.generator.modes.txt2img import txt2img
from services.generator.modes.upscale import MIN_TILE, tiled_refine, upscale_then_refine
from services.generator.modes.vae import LATENT_FACTOR, cheap_preview, full_preview
from services.generator.modes.variation import variation

__all__ = [
    "INPAINT_FILLS",
    "LATENT_FACTOR",
    "LATENT_UPSCALERS",
    "MAX_SIDE",
    "MIN_TILE",
    "RESIZE_MODES",
    "PixelUpscaler",
    "Sampling",
    "Start",
    "blur_mask",
    "cheap_preview",
    "full_preview",
    "hires_fix",
    "hires_sizes",
    "img2img",
    "initial_noise",
    "inpaint",
    "resize_image",
    "tiled_refine",
    "txt2img",
    "upscale_then_refine",
    "variation",
]
