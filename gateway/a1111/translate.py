"""A1111 requests → the gateway's generation orders, and results → A1111 responses."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from gateway.a1111.schemas import (
    ExtrasSingleImageRequest,
    GenerationResponse,
    Img2ImgRequest,
    Txt2ImgRequest,
)
from gateway.generation import (
    PREVIEW_METHODS,
    GenerationOrder,
    ImageInput,
    Run,
    check_pixel_budget,
)
from services.common.errors import InvalidArgument, NotFound
from services.common.infotext import parse_infotext
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2

SCHEDULERS: dict[str, str] = {
    "automatic": "Automatic",
    "karras": "Karras",
    "exponential": "Exponential",
    "sgm_uniform": "SGM Uniform",
    "simple": "Simple",
}
"""A1111 scheduler names → sdstack schedule types (labels are accepted too)."""

_RESIZE = {
    0: generator_pb2.RESIZE_MODE_JUST_RESIZE,
    1: generator_pb2.RESIZE_MODE_CROP_AND_RESIZE,
    2: generator_pb2.RESIZE_MODE_RESIZE_AND_FILL,
    3: generator_pb2.RESIZE_MODE_LATENT_UPSCALE,
}
_FILLS = {
    0: generator_pb2.INPAINT_FILL_FILL,
    1: generator_pb2.INPAINT_FILL_ORIGINAL,
    2: generator_pb2.INPAINT_FILL_LATENT_NOISE,
    3: generator_pb2.INPAINT_FILL_LATENT_NOTHING,
}
_INFOTEXT_CORE = frozenset(
    {"Steps", "Sampler", "CFG scale", "Seed", "Size", "Model hash", "Model", "VAE hash", "VAE"}
)
DEFAULT_PREVIEW_EVERY = 10  # A1111's show_progress_every_n_steps
NO_VAE = frozenset({"", "Automatic", "None"})


@dataclass
class UserOptions:
    """What a user set with POST /sdapi/v1/options (A1111 keeps one global set; sdstack
    keeps one per user)."""

    checkpoint: str = ""  # model name; "" = the generator's default
    vae: str = "Automatic"
    clip_skip: int = 1
    preview_every: int = DEFAULT_PREVIEW_EVERY
    preview_method: str = PREVIEW_METHODS[0]
    extra: dict[str, Any] = field(default_factory=dict)


def find_model(value: str, models: list[common_pb2.ModelInfo]) -> common_pb2.ModelInfo | None:
    """A model by any name A1111 clients use: title, name, file name, short or old hash."""
    wanted = value.strip()
    bare = wanted.split(" [", 1)[0].strip()
    for model in models:
        names = {model.title, model.name, f"{model.name}.{model.format}", model.object_key}
        hashes = {model.short_hash, model.sha256, model.sha256[:8]}
        if wanted in names or bare in names or wanted in hashes:
            return model
    return None


def schedule_type(value: str | None) -> str:
    if not value:
        return "Automatic"
    by_label = {label.lower(): label for label in SCHEDULERS.values()}
    found = SCHEDULERS.get(value.lower()) or by_label.get(value.lower())
    if found is None:
        allowed = ", ".join(SCHEDULERS)
        raise InvalidArgument("scheduler", f"must be one of {allowed}")
    return found


def hires_upscaler(name: str | None) -> str:
    """A1111's latent variants are all sdstack's `Latent`; other names pass through."""
    if not name or name == "None" or name.startswith("Latent"):
        return "Latent"
    return name


@dataclass(frozen=True)
class Resolved:
    """Settings that come from the user's options or override_settings."""

    model: str
    vae: str
    clip_skip: int


ModelLister = Callable[[common_pb2.ModelKind], list[common_pb2.ModelInfo]]


def resolve_settings(body: Txt2ImgRequest, options: UserOptions, models: ModelLister) -> Resolved:
    """Checkpoint, VAE and clip skip from override_settings, else the user's options
    (models are listed only when a name must be looked up)."""
    overrides = body.override_settings or {}
    model = options.checkpoint
    wanted = overrides.get("sd_model_checkpoint")
    if wanted:
        found = find_model(str(wanted), models(common_pb2.MODEL_KIND_CHECKPOINT))
        if found is None:
            raise NotFound("Model", str(wanted))
        model = found.name
    vae = str(overrides.get("sd_vae") or options.vae)
    if vae not in NO_VAE:
        found = find_model(vae, models(common_pb2.MODEL_KIND_VAE))
        if found is None:
            raise NotFound("VAE", vae)
        vae = found.name
    clip_skip = overrides.get("CLIP_stop_at_last_layers", options.clip_skip)
    if not isinstance(clip_skip, int) or not 1 <= clip_skip <= 12:
        raise InvalidArgument(
            "override_settings.CLIP_stop_at_last_layers", "must be an integer from 1 to 12"
        )
    return Resolved(model, "" if vae in NO_VAE else vae, clip_skip)


def apply_settings(order: GenerationOrder, settings: Resolved) -> None:
    params = order.request.params
    params.model, params.vae, params.clip_skip = settings.model, settings.vae, settings.clip_skip


def _params(body: Txt2ImgRequest) -> common_pb2.GenerationParams:
    params = common_pb2.GenerationParams(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        sampler=body.sampler_name or body.sampler_index or "Euler",
        schedule_type=schedule_type(body.scheduler),
        steps=body.steps,
        cfg_scale=body.cfg_scale,
        width=body.width,
        height=body.height,
        seed=body.seed,
        subseed=body.subseed,
        subseed_strength=body.subseed_strength,
        batch_size=body.batch_size,
        n_iter=body.n_iter,
        tiling=bool(body.tiling),
    )
    if body.eta is not None:
        params.eta = body.eta
    return params


def _order(
    body: Txt2ImgRequest,
    request: generator_pb2.GenerateRequest,
    owner: str,
    request_id: str,
    options: UserOptions,
    label: str,
) -> GenerationOrder:
    if options.preview_every > 0:
        request.preview.CopyFrom(
            generator_pb2.PreviewOptions(
                enabled=True, every_n_steps=options.preview_every, method=options.preview_method
            )
        )
    return GenerationOrder(
        owner=owner,
        request_id=body.force_task_id or request_id,
        request=request,
        save=body.save_images,
        label=label,
        styles=tuple(body.styles or ()),
    )


def txt2img_order(
    body: Txt2ImgRequest, owner: str, request_id: str, options: UserOptions, max_pixels: int
) -> GenerationOrder:
    check_pixel_budget(body.width, body.height, max_pixels, "height")
    request = generator_pb2.GenerateRequest(mode=generator_pb2.GENERATION_MODE_TXT2IMG)
    request.params.CopyFrom(_params(body))
    if body.enable_hr:
        request.hires.CopyFrom(
            generator_pb2.HiresOptions(
                enabled=True,
                scale=body.hr_scale,
                upscaler=hires_upscaler(body.hr_upscaler),
                second_pass_steps=body.hr_second_pass_steps,
                denoising_strength=0.7
                if body.denoising_strength is None
                else body.denoising_strength,
                resize_x=body.hr_resize_x,
                resize_y=body.hr_resize_y,
                sampler=body.hr_sampler_name or "",
                prompt=body.hr_prompt,
                negative_prompt=body.hr_negative_prompt,
            )
        )
    return _order(body, request, owner, request_id, options, "txt2img")


def img2img_order(
    body: Img2ImgRequest,
    owner: str,
    request_id: str,
    options: UserOptions,
    max_pixels: int,
) -> GenerationOrder:
    check_pixel_budget(body.width, body.height, max_pixels, "height")
    inpaint = bool(body.mask)
    request = generator_pb2.GenerateRequest(
        mode=generator_pb2.GENERATION_MODE_INPAINT
        if inpaint
        else generator_pb2.GENERATION_MODE_IMG2IMG
    )
    request.params.CopyFrom(_params(body))
    request.img2img.denoising_strength = (
        0.75 if body.denoising_strength is None else body.denoising_strength
    )
    request.img2img.resize_mode = _RESIZE[body.resize_mode]
    if body.initial_noise_multiplier is not None:
        request.img2img.initial_noise_multiplier = body.initial_noise_multiplier
    order = _order(body, request, owner, request_id, options, "img2img")
    order.images["img2img.init_image"] = ImageInput.from_base64(
        body.init_images[0], "init_images[0]", max_pixels
    )
    if inpaint:
        blur = (
            body.mask_blur
            if body.mask_blur is not None
            else max(body.mask_blur_x, body.mask_blur_y)
        )
        request.inpaint.mask_blur = blur
        request.inpaint.fill = _FILLS[body.inpainting_fill]
        request.inpaint.only_masked = body.inpaint_full_res
        request.inpaint.only_masked_padding = body.inpaint_full_res_padding
        request.inpaint.invert_mask = bool(body.inpainting_mask_invert)
        order.images["inpaint.mask"] = ImageInput.from_base64(body.mask or "", "mask", max_pixels)
    return order


def extras_order(
    body: ExtrasSingleImageRequest, owner: str, request_id: str, max_pixels: int
) -> GenerationOrder:
    image = ImageInput.from_base64(body.image, "image", max_pixels)
    scale = body.upscaling_resize
    if body.resize_mode == 1:
        with Image.open(io.BytesIO(image.data)) as probe:
            width, height = probe.size
        scale = max(body.upscaling_resize_w / width, body.upscaling_resize_h / height)
        if not 1 <= scale <= 8:
            raise InvalidArgument("upscaling_resize_w", "the target must be 1 to 8 times the image")
    upscaler = body.upscaler_1 if body.upscaler_1 not in ("", "None") else "Lanczos"
    request = generator_pb2.GenerateRequest(mode=generator_pb2.GENERATION_MODE_UPSCALE)
    request.upscale.CopyFrom(generator_pb2.UpscaleOptions(upscaler=upscaler, scale=scale))
    return GenerationOrder(
        owner=owner,
        request_id=request_id,
        request=request,
        images={"upscale.image": image},
        label="extras",
    )


# -- responses ---------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def generation_response(run: Run, body: Txt2ImgRequest, settings: Resolved) -> GenerationResponse:
    """A1111's `{images, parameters, info}`; `info` is a JSON string, as A1111 sends it."""
    images = [b64(image.png) for image in run.images] if body.send_images else []
    parameters = body.model_dump()
    if isinstance(body, Img2ImgRequest):
        if body.include_init_images and body.send_images:
            images += body.init_images
        parameters["init_images"] = None  # as A1111: not echoed back
        parameters["mask"] = None
    return GenerationResponse(
        images=images, parameters=parameters, info=json.dumps(info(run, body, settings))
    )


def info(run: Run, body: Txt2ImgRequest, settings: Resolved) -> dict[str, Any]:
    images = run.images
    texts = [image.infotext for image in images]
    parsed = [parse_infotext(text) for text in texts]
    first = parsed[0].params if parsed else {}
    prompts = [p.prompt for p in parsed] or [body.prompt]
    negatives = [p.negative_prompt for p in parsed] or [body.negative_prompt]
    denoising = getattr(body, "denoising_strength", None)
    return {
        "prompt": prompts[0],
        "all_prompts": prompts,
        "negative_prompt": negatives[0],
        "all_negative_prompts": negatives,
        "seed": images[0].seed if images else body.seed,
        "all_seeds": [image.seed for image in images],
        "subseed": images[0].subseed if images else body.subseed,
        "all_subseeds": [image.subseed for image in images],
        "subseed_strength": body.subseed_strength,
        "width": images[0].width if images else body.width,
        "height": images[0].height if images else body.height,
        "sampler_name": first.get("Sampler", body.sampler_name or body.sampler_index),
        "cfg_scale": body.cfg_scale,
        "steps": body.steps,
        "batch_size": body.batch_size,
        "restore_faces": bool(body.restore_faces),
        "face_restoration_model": None,
        "sd_model_name": first.get("Model"),
        "sd_model_hash": first.get("Model hash"),
        "sd_vae_name": first.get("VAE"),
        "sd_vae_hash": first.get("VAE hash"),
        "seed_resize_from_w": body.seed_resize_from_w,
        "seed_resize_from_h": body.seed_resize_from_h,
        "denoising_strength": denoising,
        "extra_generation_params": {k: v for k, v in first.items() if k not in _INFOTEXT_CORE},
        "index_of_first_image": 0,
        "infotexts": texts,
        "styles": body.styles or [],
        "job_timestamp": run.created.strftime("%Y%m%d%H%M%S"),
        "clip_skip": settings.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": "sdstack",
        "request_id": run.request_id,
    }


def png_parameters(infotext: str, size: tuple[int, int]) -> dict[str, Any]:
    """A1111's `parse_generation_parameters` shape: Prompt, Negative prompt, each key,
    and `Size-1`/`Size-2`."""
    if not infotext:
        return {}
    parsed = parse_infotext(infotext)
    result: dict[str, Any] = {"Prompt": parsed.prompt, "Negative prompt": parsed.negative_prompt}
    result.update(parsed.params)
    width, _, height = parsed.params.get("Size", f"{size[0]}x{size[1]}").partition("x")
    result["Size-1"], result["Size-2"] = width, height
    return result
