"""One generation request, defined once: settings, one task per mode, and its check.

Built by every edge (the gateway's `/v1`, the A1111 API, the generator's gRPC) and read by
the generator and the gallery. See docs/ARCHITECTURE.md for its path and how to add a setting.
"""

from services.common.generation.lora_tags import LoraTag, extract_lora_tags
from services.common.generation.request import PREVIEW_METHODS, GenerationRequest, Preview
from services.common.generation.settings import MAX_SEED, LoraUse, Settings
from services.common.generation.tasks import (
    TASKS,
    HiresOptions,
    ImageSource,
    Img2Img,
    Img2ImgOptions,
    Inpaint,
    InpaintOptions,
    Task,
    Txt2Img,
    Upscale,
    UpscaleOptions,
    Variation,
    VariationOptions,
)

__all__ = [
    "MAX_SEED",
    "PREVIEW_METHODS",
    "TASKS",
    "GenerationRequest",
    "HiresOptions",
    "ImageSource",
    "Img2Img",
    "Img2ImgOptions",
    "Inpaint",
    "InpaintOptions",
    "LoraTag",
    "LoraUse",
    "Preview",
    "Settings",
    "Task",
    "Txt2Img",
    "Upscale",
    "UpscaleOptions",
    "Variation",
    "VariationOptions",
    "extract_lora_tags",
]
