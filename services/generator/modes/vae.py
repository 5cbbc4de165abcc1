"""The VAE stage: pixels to latents and back, latent shapes, and the latent previews.

Images are encoded with the VAE's mean (no sampling), so encoding needs no random numbers."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from PIL import Image

LATENT_FACTOR = 8
"""Pixels per latent along each side (SD 1.x's VAE)."""
INPAINT_UNET_CHANNELS = 9

# A1111 "Approx cheap" (`sd_vae_approx.cheap_approximation`): SD 1.x latent channel -> RGB.
_CHEAP_RGB = torch.tensor(
    [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ]
)


def placement(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and dtype `model` computes in, read from its first weight. diffusers'
    `pipe._execution_device` and `ModelMixin.dtype` walk every module instead: 6 ms a job
    together, 4% of a 128² image on the tiny model (no offloading here, so no hook to find)."""
    weight = next(model.parameters())
    return weight.device, weight.dtype


def pixel_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> [1, 3, H, W] in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(array).permute(2, 0, 1)[None]


@torch.no_grad()
def encode_pixels(pipe: StableDiffusionPipeline, pixels: torch.Tensor) -> torch.Tensor:
    vae = pipe.vae
    pixels = pixels.to(*placement(vae))
    return vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor


def encode(pipe: StableDiffusionPipeline, image: Image.Image) -> torch.Tensor:
    return encode_pixels(pipe, pixel_tensor(image))


@torch.no_grad()
def decode(pipe: StableDiffusionPipeline, latents: torch.Tensor) -> list[Image.Image]:
    vae = pipe.vae
    _, dtype = placement(vae)
    pixels = vae.decode(latents.to(dtype) / vae.config.scaling_factor, return_dict=False)[0]
    return [image.convert("RGB") for image in pipe.image_processor.postprocess(pixels, "pil")]


def latent_shape(pipe: StableDiffusionPipeline, width: int, height: int) -> tuple[int, int, int]:
    channels = pipe.vae.config.latent_channels
    return (channels, height // LATENT_FACTOR, width // LATENT_FACTOR)


def shape_of(latents: torch.Tensor) -> tuple[int, int, int]:
    channels, height, width = latents.shape[1:]
    return (channels, height, width)


def floor8(value: float) -> int:
    """The side `value` rounded down onto the latent grid (a multiple of 8), at least 8."""
    return max(LATENT_FACTOR, int(value) // LATENT_FACTOR * LATENT_FACTOR)


def is_inpainting_model(pipe: StableDiffusionPipeline) -> bool:
    return pipe.unet.config.in_channels == INPAINT_UNET_CHANNELS


def inpaint_extra(
    pipe: StableDiffusionPipeline, pixels: torch.Tensor, repaint: torch.Tensor
) -> torch.Tensor:
    """[1, 5, h, w]: the repaint mask at latent size, then the latents of the blanked image."""
    masked = encode_pixels(pipe, pixels * (1 - repaint))
    small = F.interpolate(repaint, size=masked.shape[-2:]).to(masked)
    return torch.cat([small, masked], dim=1)


def unmasked_extra(pipe: StableDiffusionPipeline, shape: tuple[int, int, int]) -> torch.Tensor:
    """What A1111 gives an inpainting checkpoint outside inpaint: all repaint, a blank image."""
    size = (shape[1] * LATENT_FACTOR, shape[2] * LATENT_FACTOR)
    return inpaint_extra(pipe, torch.zeros(1, 3, *size), torch.ones(1, 1, *size))


def full_preview(pipe: StableDiffusionPipeline, latents: torch.Tensor) -> Image.Image:
    """A1111's "Full" preview of the first image: the VAE decodes it, as at the end."""
    return decode(pipe, latents[:1])[0]


def cheap_preview(latents: torch.Tensor) -> Image.Image:
    """A1111's "Approx cheap" preview of the first image: a linear latent -> RGB projection.

    Takes [n, 4, h, w] or [4, h, w] SD 1.x latents; returns an RGB image of h×w.
    """
    first = latents[0] if latents.ndim == 4 else latents
    rgb = torch.einsum("chw,cr->rhw", first[:4].detach().float().cpu(), _CHEAP_RGB)
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB")
