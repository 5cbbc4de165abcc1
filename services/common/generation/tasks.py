"""What a generation makes: one variant per mode, each with exactly the options it uses.

A txt2img task cannot carry a mask and an upscale cannot carry hi-res options: the variant
is the mode. Option groups keep the names of the wire (`img2img`, `inpaint`, `hires`,
`upscale`, `variation`), so the HTTP body, the protobuf message and this value read alike.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from services.common.generation.settings import (
    MAX_STEPS,
    Fraction,
    Model,
    Name,
    Prompt,
    multiple_of_8,
)

MAX_MASK_BLUR = 64
MAX_ONLY_MASKED_PADDING = 256
MAX_HIRES_SCALE = 4.0
MAX_HIRES_SIZE = 4096
MAX_UPSCALE = 8.0
MIN_TILE, MAX_TILE = 256, 1024
MAX_TILE_OVERLAP = 256
UPSCALE_PIXEL_FACTOR = 4
"""An upscale may end 4× over the generation pixel budget."""
LATENT_UPSCALER = "Latent"
VARIATION_STRENGTHS = {"subtle": 0.5, "strong": 0.85}
"""Midjourney V / Fooocus Vary strengths as img2img denoising."""

ResizeMode = Literal["just_resize", "crop_and_resize", "resize_and_fill", "latent_upscale"]
InpaintFill = Literal["fill", "original", "latent_noise", "latent_nothing"]
VariationStrength = Literal["subtle", "strong"]
Blur = Annotated[int, Field(ge=0, le=MAX_MASK_BLUR)]
HiresSize = Annotated[int, Field(ge=0, le=MAX_HIRES_SIZE, multiple_of=8)]


class ImageSource(Model):
    """An image a task starts from: encoded bytes, a gallery image of the caller, or a key
    in the `outputs` bucket; at most one. None of them is an image not known: a stored
    record whose source was sent inline (the gallery keeps no copy). A job needs one
    (`GenerationRequest.check`)."""

    data: bytes = Field(b"", exclude=True)  # never stored: the gallery keeps its images
    image_id: str = Field("", pattern=r"^([0-9a-f]{32})?$")
    object_key: str = Field("", max_length=1024)

    @model_validator(mode="after")
    def _at_most_one(self) -> ImageSource:
        if sum(map(bool, (self.data, self.image_id, self.object_key))) > 1:
            raise ValueError("give one of data, image_id and object_key")
        return self

    @property
    def given(self) -> bool:
        return bool(self.data or self.image_id or self.object_key)


class Img2ImgOptions(Model):
    denoising_strength: Fraction = Field(0.75, description="How much to change the image.")
    resize_mode: ResizeMode = "just_resize"
    initial_noise_multiplier: float = Field(1.0, ge=0, le=1.5, allow_inf_nan=False)


class InpaintOptions(Model):
    mask_blur: Blur = Field(4, description="Blur radius of the mask in pixels.")
    mask_blur_x: Blur | None = Field(None, description="Horizontal radius; default mask_blur.")
    mask_blur_y: Blur | None = Field(None, description="Vertical radius; default mask_blur.")
    fill: InpaintFill = Field("original", description="What the masked area starts from.")
    only_masked: bool = Field(False, description="Repaint the masked region at full resolution.")
    only_masked_padding: int = Field(32, ge=0, le=MAX_ONLY_MASKED_PADDING)
    invert_mask: bool = Field(False, description="Repaint the black part instead.")

    @property
    def blur(self) -> tuple[int, int]:
        """(horizontal, vertical) radius."""
        x = self.mask_blur if self.mask_blur_x is None else self.mask_blur_x
        y = self.mask_blur if self.mask_blur_y is None else self.mask_blur_y
        return x, y


class HiresOptions(Model):
    """A1111 hi-res fix: generate, upscale, second pass."""

    scale: float = Field(2.0, gt=1, le=MAX_HIRES_SCALE, allow_inf_nan=False)
    upscaler: Name = Field(LATENT_UPSCALER, description="A name from /v1/upscalers.")
    second_pass_steps: int = Field(0, ge=0, le=MAX_STEPS, description="0 = same as steps.")
    denoising_strength: Fraction = 0.7
    resize_x: HiresSize = Field(0, description="Target width; 0 = use scale.")
    resize_y: HiresSize = Field(0, description="Target height; 0 = use scale.")
    sampler: Name = Field("", description="Default: the first pass's.")
    prompt: Prompt = Field("", description="Default: the first pass's.")
    negative_prompt: Prompt = Field("", description="Default: the first pass's.")

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        if self.resize_x and self.resize_y:
            return self.resize_x, self.resize_y
        return multiple_of_8(width * self.scale), multiple_of_8(height * self.scale)


class UpscaleOptions(Model):
    upscaler: Name = Field("Lanczos", description="A name from /v1/upscalers.")
    scale: float = Field(2.0, ge=1, le=MAX_UPSCALE, allow_inf_nan=False)
    tiled_refine: bool = Field(False, description="An img2img pass per tile, stitched.")
    tile_size: int = Field(512, ge=MIN_TILE, le=MAX_TILE, multiple_of=8)
    tile_overlap: int = Field(64, ge=0, le=MAX_TILE_OVERLAP)
    denoising_strength: Fraction = Field(0.382, description="Of the refine pass (Fooocus).")


class VariationOptions(Model):
    strength: VariationStrength = "subtle"


class Txt2Img(Model):
    mode: Literal["txt2img"] = "txt2img"
    hires: HiresOptions | None = Field(None, description="Hi-res fix; off when null.")


class Img2Img(Model):
    mode: Literal["img2img"] = "img2img"
    image: ImageSource
    img2img: Img2ImgOptions = Field(default_factory=Img2ImgOptions)


class Inpaint(Model):
    mode: Literal["inpaint"] = "inpaint"
    image: ImageSource
    mask: ImageSource = Field(description="White = repaint, black = keep.")
    img2img: Img2ImgOptions = Field(default_factory=Img2ImgOptions)
    inpaint: InpaintOptions = Field(default_factory=InpaintOptions)


class Upscale(Model):
    mode: Literal["upscale"] = "upscale"
    image: ImageSource
    upscale: UpscaleOptions = Field(default_factory=UpscaleOptions)


class Variation(Model):
    mode: Literal["variation"] = "variation"
    image: ImageSource
    variation: VariationOptions = Field(default_factory=VariationOptions)


Task = Annotated[Txt2Img | Img2Img | Inpaint | Upscale | Variation, Field(discriminator="mode")]
Mode = Literal["txt2img", "img2img", "inpaint", "upscale", "variation"]
TASKS: dict[str, type[Txt2Img | Img2Img | Inpaint | Upscale | Variation]] = {
    "txt2img": Txt2Img,
    "img2img": Img2Img,
    "inpaint": Inpaint,
    "upscale": Upscale,
    "variation": Variation,
}
"""Each mode's task, by its name."""
OPTION_GROUPS = ("img2img", "inpaint", "hires", "upscale", "variation")
"""The tasks' option groups, named as on the wire."""


def denoising_strength(task: Txt2Img | Img2Img | Inpaint | Upscale | Variation) -> float | None:
    """How much of the picture the task's (last) sampling pass repaints; None for none."""
    if isinstance(task, Img2Img | Inpaint):
        return task.img2img.denoising_strength
    if isinstance(task, Txt2Img):
        return task.hires.denoising_strength if task.hires else None
    if isinstance(task, Variation):
        return VARIATION_STRENGTHS[task.variation.strength]
    return task.upscale.denoising_strength if task.upscale.tiled_refine else None
