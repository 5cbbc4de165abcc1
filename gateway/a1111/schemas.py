"""Request and response bodies of the AUTOMATIC1111-compatible API (`/sdapi/v1`).

Field names and defaults are A1111's (`modules/api/models.py`). Fields A1111 accepts that
sdstack has no use for (restore_faces, scripts, …) are accepted and ignored, since clients
send them; every typed field is validated. `null` means the default, as it does in A1111.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from services.common.generation.settings import (
    MAX_BATCH_SIZE,
    MAX_CFG,
    MAX_N_ITER,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_SIZE,
    MAX_STEPS,
    MIN_SIZE,
    NAME_PATTERN,
    SIZE_STEP,
)
from services.common.generation.tasks import (
    MAX_HIRES_SCALE,
    MAX_HIRES_SIZE,
    MAX_MASK_BLUR,
    MAX_ONLY_MASKED_PADDING,
    MAX_UPSCALE,
)

MAX_BASE64_CHARS = (32 * 1024 * 1024 + 2) // 3 * 4 + 256
Base64Image = str


class Lenient(BaseModel):
    """Unknown fields are accepted and ignored, as A1111 clients send many."""

    model_config = ConfigDict(extra="allow")


class Txt2ImgRequest(Lenient):
    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    styles: list[Annotated[str, Field(pattern=NAME_PATTERN)]] | None = Field(
        None, max_length=8, description="Style preset names."
    )
    seed: int = Field(-1, ge=-1, le=MAX_SEED)
    subseed: int = Field(-1, ge=-1, le=MAX_SEED)
    subseed_strength: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = Field(None, max_length=64)
    sampler_index: str | None = Field("Euler", max_length=64, description="Legacy sampler name.")
    scheduler: str | None = Field(None, max_length=32, description="Schedule type.")
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE)
    n_iter: int = Field(1, ge=1, le=MAX_N_ITER)
    steps: int = Field(50, ge=1, le=MAX_STEPS)
    cfg_scale: float = Field(7.0, ge=0, le=MAX_CFG, allow_inf_nan=False)
    width: int = Field(512, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=SIZE_STEP)
    height: int = Field(512, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=SIZE_STEP)
    restore_faces: bool | None = None
    tiling: bool | None = None
    eta: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    denoising_strength: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    override_settings: dict[str, Any] | None = Field(
        None, description="sd_model_checkpoint, sd_vae, CLIP_stop_at_last_layers are used."
    )
    override_settings_restore_afterwards: bool = True
    enable_hr: bool = False
    hr_scale: float = Field(2.0, gt=1, le=MAX_HIRES_SCALE, allow_inf_nan=False)
    hr_upscaler: str | None = Field(None, max_length=128)
    hr_second_pass_steps: int = Field(0, ge=0, le=MAX_STEPS)
    hr_resize_x: int = Field(0, ge=0, le=MAX_HIRES_SIZE, multiple_of=SIZE_STEP)
    hr_resize_y: int = Field(0, ge=0, le=MAX_HIRES_SIZE, multiple_of=SIZE_STEP)
    hr_sampler_name: str | None = Field(None, max_length=64)
    hr_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    hr_negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    send_images: bool = True
    save_images: bool = Field(True, description="Store the images in the gallery.")
    force_task_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]{1,64}$")


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[Annotated[Base64Image, Field(max_length=MAX_BASE64_CHARS)]] = Field(
        min_length=1, max_length=8, description="Base64 images; the first is used."
    )
    mask: Base64Image | None = Field(None, max_length=MAX_BASE64_CHARS)
    resize_mode: int = Field(0, ge=0, le=3, description="0 just resize, 1 crop, 2 fill, 3 latent.")
    denoising_strength: float | None = Field(0.75, ge=0, le=1, allow_inf_nan=False)
    image_cfg_scale: float | None = None
    mask_blur: int | None = Field(
        None, ge=0, le=MAX_MASK_BLUR, description="Sets mask_blur_x and _y."
    )
    mask_blur_x: int = Field(4, ge=0, le=MAX_MASK_BLUR)
    mask_blur_y: int = Field(4, ge=0, le=MAX_MASK_BLUR)
    inpainting_fill: int = Field(0, ge=0, le=3, description="0 fill, 1 original, 2/3 latent.")
    inpaint_full_res: bool = Field(True, description="Only the masked region, at full size.")
    inpaint_full_res_padding: int = Field(32, ge=0, le=MAX_ONLY_MASKED_PADDING)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    initial_noise_multiplier: float | None = Field(None, ge=0, le=1.5, allow_inf_nan=False)
    include_init_images: bool = False


class GenerationResponse(BaseModel):
    images: list[str] = Field(description="Base64 PNGs, with their `parameters` chunk.")
    parameters: dict[str, Any] = Field(description="The request, as it was understood.")
    info: str = Field(description="JSON text: seeds, infotexts and the settings used.")


class ExtrasSingleImageRequest(Lenient):
    image: Base64Image = Field(max_length=MAX_BASE64_CHARS)
    resize_mode: int = Field(0, ge=0, le=1, description="0 scale by, 1 scale to size.")
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0, ge=0, le=1)
    codeformer_visibility: float = Field(0, ge=0, le=1)
    codeformer_weight: float = Field(0, ge=0, le=1)
    upscaling_resize: float = Field(2.0, ge=1, le=MAX_UPSCALE, allow_inf_nan=False)
    upscaling_resize_w: int = Field(512, ge=1, le=8192)
    upscaling_resize_h: int = Field(512, ge=1, le=8192)
    upscaling_crop: bool = True
    upscaler_1: str = Field("None", max_length=128)
    upscaler_2: str = Field("None", max_length=128)
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1)
    upscale_first: bool = False


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str = Field(description="Base64 PNG.")


class PngInfoRequest(Lenient):
    image: Base64Image = Field(max_length=MAX_BASE64_CHARS)


class PngInfoResponse(BaseModel):
    info: str = Field(description="The `parameters` text.")
    items: dict[str, Any] = Field(description="The image's other text chunks.")
    parameters: dict[str, Any] = Field(description="The infotext parsed, A1111 keys.")


class ProgressState(BaseModel):
    skipped: bool
    interrupted: bool
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int


class ProgressResponse(BaseModel):
    progress: float = Field(ge=0, le=1)
    eta_relative: float
    state: ProgressState
    current_image: str | None = Field(description="Base64 preview of the running job.")
    textinfo: str | None


class SdModel(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None


class SdVae(BaseModel):
    model_name: str
    filename: str


class Lora(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any]


class Sampler(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class Scheduler(BaseModel):
    name: str
    label: str
    aliases: list[str] | None
    default_rho: float
    need_inner_model: bool


class Upscaler(BaseModel):
    name: str
    model_name: str | None
    model_path: str | None
    model_url: str | None
    scale: float | None


class LatentUpscaleMode(BaseModel):
    name: str


class PromptStyle(BaseModel):
    name: str
    prompt: str | None
    negative_prompt: str | None
