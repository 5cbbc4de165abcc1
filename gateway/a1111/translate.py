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
from gateway.generation import GenerationOrder, Run, image_from_base64
from services.common.errors import InvalidArgument, NotFound
from services.common.generation import PREVIEW_METHODS, GenerationRequest
from services.common.generation.request import renamed, validated
from services.common.generation.settings import MAX_CLIP_SKIP
from services.common.generation.tasks import MAX_UPSCALE
from services.common.infotext import parse_infotext
from services.common.proto.sdstack.v1 import common_pb2

SCHEDULERS: dict[str, str] = {
    "automatic": "Automatic",
    "karras": "Karras",
    "exponential": "Exponential",
    "sgm_uniform": "SGM Uniform",
    "simple": "Simple",
}
"""A1111 scheduler names → sdstack schedule types (labels are accepted too)."""

RESIZE_MODES = ("just_resize", "crop_and_resize", "resize_and_fill", "latent_upscale")
"""A1111's `resize_mode` numbers, in order."""
FILLS = ("fill", "original", "latent_noise", "latent_nothing")
"""A1111's `inpainting_fill` numbers, in order."""
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
    """A1111's hi-res upscaler: none given (or `None`) is `Latent`; names, its latent
    variants included, pass through to the generator, which lists what it has."""
    if not name or name == "None":
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
    if not isinstance(clip_skip, int) or not 1 <= clip_skip <= MAX_CLIP_SKIP:
        raise InvalidArgument(
            "override_settings.CLIP_stop_at_last_layers",
            f"must be an integer from 1 to {MAX_CLIP_SKIP}",
        )
    return Resolved(model, "" if vae in NO_VAE else vae, clip_skip)


def apply_settings(order: GenerationOrder, settings: Resolved) -> None:
    """The checkpoint, VAE and clip skip the user's options or override_settings chose."""
    chosen = {"model": settings.model, "vae": settings.vae, "clip_skip": settings.clip_skip}
    request = order.request
    order.request = request.model_copy(
        update={"settings": request.settings.model_copy(update=chosen)}
    )


def a1111_name(path: str) -> str:
    """A domain path by the name an A1111 client sent it under."""
    field = path.rsplit(".", 1)[-1]
    return {"image": "init_images[0]", "hires": "hr_scale"}.get(field, field)


def _settings(body: Txt2ImgRequest) -> dict[str, Any]:
    return {
        "prompt": body.prompt,
        "negative_prompt": body.negative_prompt,
        "sampler": body.sampler_name or body.sampler_index or "Euler",
        "schedule_type": schedule_type(body.scheduler),
        "steps": body.steps,
        "cfg_scale": body.cfg_scale,
        "width": body.width,
        "height": body.height,
        "seed": body.seed,
        "subseed": body.subseed,
        "subseed_strength": body.subseed_strength,
        "batch_size": body.batch_size,
        "n_iter": body.n_iter,
        "tiling": bool(body.tiling),
        "eta": body.eta,
    }


def _order(
    body: Txt2ImgRequest,
    task: dict[str, Any],
    owner: str,
    request_id: str,
    options: UserOptions,
    max_pixels: int,
    label: str,
) -> GenerationOrder:
    preview = None
    if options.preview_every > 0:
        preview = {"every_n_steps": options.preview_every, "method": options.preview_method}
    data = {"settings": _settings(body), "task": task, "preview": preview}
    try:
        request = validated(GenerationRequest, data)
        request.check(max_pixels)
    except InvalidArgument as error:
        raise renamed(error, a1111_name) from None
    return GenerationOrder(
        owner=owner,
        request_id=body.force_task_id or request_id,
        request=request,
        save=body.save_images,
        label=label,
        styles=tuple(body.styles or ()),
        rename=a1111_name,
    )


def txt2img_order(
    body: Txt2ImgRequest, owner: str, request_id: str, options: UserOptions, max_pixels: int
) -> GenerationOrder:
    task: dict[str, Any] = {"mode": "txt2img"}
    if body.enable_hr:
        task["hires"] = {
            "scale": body.hr_scale,
            "upscaler": hires_upscaler(body.hr_upscaler),
            "second_pass_steps": body.hr_second_pass_steps,
            "denoising_strength": 0.7
            if body.denoising_strength is None
            else body.denoising_strength,
            "resize_x": body.hr_resize_x,
            "resize_y": body.hr_resize_y,
            "sampler": body.hr_sampler_name or "",
            "prompt": body.hr_prompt,
            "negative_prompt": body.hr_negative_prompt,
        }
    return _order(body, task, owner, request_id, options, max_pixels, "txt2img")


def img2img_order(
    body: Img2ImgRequest,
    owner: str,
    request_id: str,
    options: UserOptions,
    max_pixels: int,
) -> GenerationOrder:
    img2img: dict[str, Any] = {
        "denoising_strength": 0.75 if body.denoising_strength is None else body.denoising_strength,
        "resize_mode": RESIZE_MODES[body.resize_mode],
    }
    if body.initial_noise_multiplier is not None:
        img2img["initial_noise_multiplier"] = body.initial_noise_multiplier
    image = image_from_base64(body.init_images[0], "init_images[0]", max_pixels)
    task: dict[str, Any] = {"mode": "img2img", "image": image, "img2img": img2img}
    if body.mask:
        blur = (
            body.mask_blur
            if body.mask_blur is not None
            else max(body.mask_blur_x, body.mask_blur_y)
        )
        task |= {
            "mode": "inpaint",
            "mask": image_from_base64(body.mask, "mask", max_pixels),
            "inpaint": {
                "mask_blur": blur,
                "fill": FILLS[body.inpainting_fill],
                "only_masked": body.inpaint_full_res,
                "only_masked_padding": body.inpaint_full_res_padding,
                "invert_mask": bool(body.inpainting_mask_invert),
            },
        }
    return _order(body, task, owner, request_id, options, max_pixels, "img2img")


def extras_order(
    body: ExtrasSingleImageRequest, owner: str, request_id: str, max_pixels: int
) -> GenerationOrder:
    image = image_from_base64(body.image, "image", max_pixels)
    scale = body.upscaling_resize
    if body.resize_mode == 1:
        with Image.open(io.BytesIO(image.data)) as probe:
            width, height = probe.size
        scale = max(body.upscaling_resize_w / width, body.upscaling_resize_h / height)
        if not 1 <= scale <= MAX_UPSCALE:
            rule = f"the target must be 1 to {MAX_UPSCALE:g} times the image"
            raise InvalidArgument("upscaling_resize_w", rule)
    upscaler = body.upscaler_1 if body.upscaler_1 not in ("", "None") else "Lanczos"
    task = {"mode": "upscale", "image": image, "upscale": {"upscaler": upscaler, "scale": scale}}
    try:
        request = validated(GenerationRequest, {"task": task})
    except InvalidArgument as error:
        raise renamed(error, a1111_name) from None
    return GenerationOrder(owner=owner, request_id=request_id, request=request, label="extras")


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
