"""Validated generation jobs: what the engine runs, with every default filled in.

`job_from_request` is the generator's edge check (SPEC §9): every broken rule becomes an
`InvalidArgument` naming the field, before anything is queued. Images are decoded here
too, so a corrupt upload is refused before it waits in the queue.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from PIL import Image

from services.common.errors import FieldViolation, InvalidArgument
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2
from services.common.request_context import (
    current_request_id,
    is_valid_request_id,
    new_request_id,
)
from services.generator import deep_cache
from services.generator.prompts import extract_lora_tags
from services.generator.samplers import DEFAULT_SAMPLER, resolve_sampler, resolve_schedule_type

MAX_PROMPT_CHARS = 20_000
MAX_SEED = 4_294_967_294
MAX_LORAS = 16
DEFAULT_STEPS = 20
DEFAULT_CFG = 7.0
DEFAULT_SIZE = 512
LATENT_UPSCALERS = ("Latent",)
UPSCALE_PIXEL_FACTOR = 4  # an upscale may end 4× over the generation pixel budget
PREVIEW_METHODS = ("Approx cheap", "TAESD", "Full")
"""A1111's live preview types sdstack makes; the first is the default."""

ImageResolver = Callable[[common_pb2.ImageRef, str], Image.Image]
"""Turns an ImageRef into a decoded RGB image, raising InvalidArgument naming the field."""


class Mode(StrEnum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"
    UPSCALE = "upscale"
    VARIATION = "variation"


_MODES = {
    generator_pb2.GENERATION_MODE_UNSPECIFIED: Mode.TXT2IMG,
    generator_pb2.GENERATION_MODE_TXT2IMG: Mode.TXT2IMG,
    generator_pb2.GENERATION_MODE_IMG2IMG: Mode.IMG2IMG,
    generator_pb2.GENERATION_MODE_INPAINT: Mode.INPAINT,
    generator_pb2.GENERATION_MODE_UPSCALE: Mode.UPSCALE,
    generator_pb2.GENERATION_MODE_VARIATION: Mode.VARIATION,
}
_RESIZE_MODES = {
    generator_pb2.RESIZE_MODE_UNSPECIFIED: "just_resize",
    generator_pb2.RESIZE_MODE_JUST_RESIZE: "just_resize",
    generator_pb2.RESIZE_MODE_CROP_AND_RESIZE: "crop_and_resize",
    generator_pb2.RESIZE_MODE_RESIZE_AND_FILL: "resize_and_fill",
    generator_pb2.RESIZE_MODE_LATENT_UPSCALE: "latent_upscale",
}
_FILLS = {
    generator_pb2.INPAINT_FILL_UNSPECIFIED: "original",
    generator_pb2.INPAINT_FILL_FILL: "fill",
    generator_pb2.INPAINT_FILL_ORIGINAL: "original",
    generator_pb2.INPAINT_FILL_LATENT_NOISE: "latent_noise",
    generator_pb2.INPAINT_FILL_LATENT_NOTHING: "latent_nothing",
}


@dataclass(frozen=True)
class LoraUse:
    name: str
    unet_weight: float
    te_weight: float


@dataclass(frozen=True)
class Params:
    """Sampling settings shared by every mode, defaults applied and the seed resolved."""

    prompt: str  # with `<lora:…>` tags removed
    negative_prompt: str
    model: str
    vae: str
    loras: tuple[LoraUse, ...]
    sampler: str
    schedule_type: str
    steps: int
    cfg_scale: float
    width: int
    height: int
    seed: int
    subseed: int
    subseed_strength: float
    batch_size: int
    n_iter: int
    clip_skip: int
    eta: float | None = None
    tiling: bool = False  # A1111 "Tiling": the image tiles seamlessly
    deep_cache_interval: int = 0  # DeepCache: 0 or 1 is off
    original_prompt: str = ""  # as the user wrote it, for the infotext

    @property
    def image_count(self) -> int:
        return self.batch_size * self.n_iter

    def seeds(self) -> list[int]:
        """A1111: image i of the job gets seed + i (variation seeds likewise)."""
        return [self.seed + i for i in range(self.image_count)]

    def subseeds(self) -> list[int]:
        return [self.subseed + i for i in range(self.image_count)]


@dataclass(frozen=True)
class Img2ImgSpec:
    init_image: Image.Image
    strength: float
    resize_mode: str
    noise_multiplier: float


@dataclass(frozen=True)
class InpaintSpec:
    mask: Image.Image
    mask_blur: tuple[int, int]  # (horizontal, vertical) radius
    fill: str
    only_masked: bool
    padding: int
    invert: bool


@dataclass(frozen=True)
class HiresSpec:
    scale: float
    upscaler: str
    second_pass_steps: int
    strength: float
    resize_x: int
    resize_y: int
    sampler: str
    prompt: str
    negative_prompt: str

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        if self.resize_x and self.resize_y:
            return self.resize_x, self.resize_y
        return _multiple_of_8(width * self.scale), _multiple_of_8(height * self.scale)


@dataclass(frozen=True)
class UpscaleSpec:
    image: Image.Image
    upscaler: str
    scale: float
    tiled_refine: bool
    tile_size: int
    tile_overlap: int
    strength: float


@dataclass(frozen=True)
class VariationSpec:
    source: Image.Image
    strength: str  # "subtle" or "strong"


@dataclass(frozen=True)
class GenerationJob:
    request_id: str
    owner: str
    mode: Mode
    params: Params
    img2img: Img2ImgSpec | None = None
    inpaint: InpaintSpec | None = None
    hires: HiresSpec | None = None
    upscale: UpscaleSpec | None = None
    variation: VariationSpec | None = None
    priority: int = 0
    preview_every: int = 0
    preview_max_size: int = 256
    preview_method: str = PREVIEW_METHODS[0]
    timeout_seconds: float | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        """Denoising steps the whole job runs, for progress and ETA."""
        per_image = self.params.steps
        if self.mode in (Mode.IMG2IMG, Mode.INPAINT) and self.img2img is not None:
            per_image = max(1, math.ceil(self.params.steps * self.img2img.strength))
        if self.hires is not None:
            per_image += self.hires.second_pass_steps or self.params.steps
        if self.mode is Mode.UPSCALE:
            return 1
        return per_image * self.params.n_iter


class _Checker:
    """Collects every violation so the client hears about all of them at once."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def require(self, ok: bool, field_name: str, rule: str) -> None:
        if not ok:
            self.violations.append(FieldViolation(field_name, rule))

    def in_range(self, value: float, low: float, high: float, field_name: str) -> None:
        ok = math.isfinite(value) and low <= value <= high
        self.require(ok, field_name, f"must be between {low:g} and {high:g}")

    def raise_if_any(self) -> None:
        if self.violations:
            raise InvalidArgument.many(self.violations)


def _f32(value: float) -> float:
    """A protobuf `float` as the decimal the client meant (0.1, not 0.10000000149)."""
    return float(f"{value:.7g}")


def _multiple_of_8(value: float) -> int:
    return max(64, int(value) // 8 * 8)


def resolve_seed(seed: int | None) -> int:
    """-1 or unset draws a random seed in [0, 4294967294], as A1111 does."""
    if seed is None or seed == -1:
        return secrets.randbelow(MAX_SEED + 1)
    return seed


def _check_size(check: _Checker, name: str, value: int) -> None:
    check.require(64 <= value <= 2048, name, "must be between 64 and 2048")
    check.require(value % 8 == 0, name, "must be a multiple of 8")


def _loras(check: _Checker, p: common_pb2.GenerationParams, prompt: str) -> tuple[str, list]:
    cleaned, tags = extract_lora_tags(prompt)
    uses = [LoraUse(t.name, t.unet_weight, t.te_weight) for t in tags]
    for i, lora in enumerate(p.loras):
        weight = _f32(lora.weight) if lora.HasField("weight") else 1.0
        te = _f32(lora.text_encoder_weight) if lora.HasField("text_encoder_weight") else weight
        check.require(bool(lora.name), f"params.loras[{i}].name", "is required")
        check.in_range(weight, -4, 4, f"params.loras[{i}].weight")
        check.in_range(te, -4, 4, f"params.loras[{i}].text_encoder_weight")
        uses.append(LoraUse(lora.name, weight, te))
    check.require(len(uses) <= MAX_LORAS, "params.loras", f"at most {MAX_LORAS} LoRAs")
    return cleaned, uses


BATCH_PIXEL_FACTOR = 4  # a batch is denoised at once: 8 × 1024² fits, 8 × 2048² does not


def _params(
    check: _Checker, p: common_pb2.GenerationParams, size: tuple[int, int], max_pixels: int
) -> Params:
    check.require(len(p.prompt) <= MAX_PROMPT_CHARS, "params.prompt", "at most 20000 characters")
    check.require(
        len(p.negative_prompt) <= MAX_PROMPT_CHARS,
        "params.negative_prompt",
        "at most 20000 characters",
    )
    for name in ("prompt", "negative_prompt"):  # PNG text and PostgreSQL cannot hold NUL
        check.require("\x00" not in getattr(p, name), f"params.{name}", "must not contain NUL")
    width, height = p.width or size[0], p.height or size[1]
    _check_size(check, "params.width", width)
    _check_size(check, "params.height", height)
    check.require(
        width * height <= max_pixels, "params.width", f"width×height must be ≤ {max_pixels} pixels"
    )
    steps = p.steps or DEFAULT_STEPS
    check.require(1 <= steps <= 150, "params.steps", "must be between 1 and 150")
    cfg = _f32(p.cfg_scale) if p.HasField("cfg_scale") else DEFAULT_CFG
    check.in_range(cfg, 0, 30, "params.cfg_scale")
    for name in ("seed", "subseed"):
        value = getattr(p, name) if p.HasField(name) else None
        check.require(
            value is None or value == -1 or 0 <= value <= MAX_SEED,
            f"params.{name}",
            "must be -1 or between 0 and 4294967294",
        )
    check.in_range(p.subseed_strength, 0, 1, "params.subseed_strength")
    batch_size, n_iter = p.batch_size or 1, p.n_iter or 1
    check.require(1 <= batch_size <= 8, "params.batch_size", "must be between 1 and 8")
    check.require(1 <= n_iter <= 16, "params.n_iter", "must be between 1 and 16")
    check.require(
        batch_size * width * height <= BATCH_PIXEL_FACTOR * max_pixels,
        "params.batch_size",
        f"batch_size×width×height must be ≤ {BATCH_PIXEL_FACTOR * max_pixels} pixels",
    )
    clip_skip = p.clip_skip or 1
    check.require(1 <= clip_skip <= 12, "params.clip_skip", "must be between 1 and 12")
    if p.HasField("eta"):
        check.in_range(p.eta, 0, 1, "params.eta")
    check.require(
        0 <= p.deep_cache_interval <= deep_cache.MAX_INTERVAL,
        deep_cache.FIELD,
        deep_cache.RULE,
    )
    prompt, loras = _loras(check, p, p.prompt)
    sampler = resolve_sampler(p.sampler or DEFAULT_SAMPLER)
    resolve_schedule_type(p.schedule_type)
    return Params(
        prompt=prompt,
        negative_prompt=p.negative_prompt,
        model=p.model,
        vae=p.vae,
        loras=tuple(loras),
        sampler=sampler.name,
        schedule_type=p.schedule_type or "Automatic",
        steps=steps,
        cfg_scale=cfg,
        width=width,
        height=height,
        seed=resolve_seed(p.seed if p.HasField("seed") else None),
        subseed=resolve_seed(p.subseed if p.HasField("subseed") else None),
        subseed_strength=_f32(p.subseed_strength),
        batch_size=batch_size,
        n_iter=n_iter,
        clip_skip=clip_skip,
        eta=_f32(p.eta) if p.HasField("eta") else None,
        tiling=p.tiling,
        deep_cache_interval=p.deep_cache_interval,
        original_prompt=p.prompt,
    )


def _image(
    check: _Checker, ref: common_pb2.ImageRef, name: str, resolve: ImageResolver
) -> Image.Image | None:
    if ref.WhichOneof("source") is None:
        check.require(False, name, "is required for this mode")
        return None
    return resolve(ref, name)


def _img2img(
    check: _Checker, o: generator_pb2.Img2ImgOptions, resolve: ImageResolver
) -> Img2ImgSpec | None:
    image = _image(check, o.init_image, "img2img.init_image", resolve)
    strength = _f32(o.denoising_strength) if o.HasField("denoising_strength") else 0.75
    check.in_range(strength, 0, 1, "img2img.denoising_strength")
    noise = _f32(o.initial_noise_multiplier) if o.HasField("initial_noise_multiplier") else 1.0
    check.in_range(noise, 0, 1.5, "img2img.initial_noise_multiplier")
    if image is None:
        return None
    return Img2ImgSpec(image, strength, _RESIZE_MODES[o.resize_mode], noise)


def _inpaint(
    check: _Checker, o: generator_pb2.InpaintOptions, resolve: ImageResolver
) -> InpaintSpec | None:
    mask = _image(check, o.mask, "inpaint.mask", resolve)
    blur = o.mask_blur if o.HasField("mask_blur") else 4
    check.require(0 <= blur <= 64, "inpaint.mask_blur", "must be between 0 and 64")
    blur_x = o.mask_blur_x if o.HasField("mask_blur_x") else blur
    check.require(0 <= blur_x <= 64, "inpaint.mask_blur_x", "must be between 0 and 64")
    blur_y = o.mask_blur_y if o.HasField("mask_blur_y") else blur
    check.require(0 <= blur_y <= 64, "inpaint.mask_blur_y", "must be between 0 and 64")
    padding = o.only_masked_padding if o.HasField("only_masked_padding") else 32
    check.require(0 <= padding <= 256, "inpaint.only_masked_padding", "must be between 0 and 256")
    if mask is None:
        return None
    return InpaintSpec(
        mask.convert("L"), (blur_x, blur_y), _FILLS[o.fill], o.only_masked, padding, o.invert_mask
    )


def _hires(check: _Checker, o: generator_pb2.HiresOptions, params: Params) -> HiresSpec | None:
    if not o.enabled:
        return None
    scale = _f32(o.scale) if o.HasField("scale") else 2.0
    check.require(
        math.isfinite(scale) and 1 < scale <= 4, "hires.scale", "must be greater than 1, at most 4"
    )
    strength = _f32(o.denoising_strength) if o.HasField("denoising_strength") else 0.7
    check.in_range(strength, 0, 1, "hires.denoising_strength")
    check.require(0 <= o.second_pass_steps <= 150, "hires.second_pass_steps", "must be 0..150")
    for name in ("resize_x", "resize_y"):
        value = getattr(o, name)
        check.require(value == 0 or 64 <= value <= 4096, f"hires.{name}", "0 or 64..4096")
        check.require(value % 8 == 0, f"hires.{name}", "must be a multiple of 8")
    spec = HiresSpec(
        scale=scale,
        upscaler=o.upscaler or "Latent",
        second_pass_steps=o.second_pass_steps,
        strength=strength,
        resize_x=o.resize_x,
        resize_y=o.resize_y,
        sampler=resolve_sampler(o.sampler, "hires.sampler").name if o.sampler else params.sampler,
        prompt=o.prompt or params.prompt,
        negative_prompt=o.negative_prompt or params.negative_prompt,
    )
    return spec


def _upscale(
    check: _Checker, o: generator_pb2.UpscaleOptions, resolve: ImageResolver
) -> UpscaleSpec | None:
    image = _image(check, o.image, "upscale.image", resolve)
    scale = _f32(o.scale) if o.HasField("scale") else 2.0
    check.in_range(scale, 1, 8, "upscale.scale")
    tile = o.tile_size or 512
    check.require(256 <= tile <= 1024 and tile % 8 == 0, "upscale.tile_size", "256..1024, ×8")
    overlap = o.tile_overlap or 64
    check.require(0 <= overlap <= 256, "upscale.tile_overlap", "must be between 0 and 256")
    strength = _f32(o.denoising_strength) if o.HasField("denoising_strength") else 0.382
    check.in_range(strength, 0, 1, "upscale.denoising_strength")
    if image is None:
        return None
    return UpscaleSpec(
        image, o.upscaler or "Lanczos", scale, o.tiled_refine, tile, overlap, strength
    )


def _variation(
    check: _Checker, o: generator_pb2.VariationOptions, resolve: ImageResolver
) -> VariationSpec | None:
    image = _image(check, o.source, "variation.source", resolve)
    strength = "strong" if o.strength == generator_pb2.VARIATION_STRENGTH_STRONG else "subtle"
    return None if image is None else VariationSpec(image, strength)


def job_from_request(
    request: generator_pb2.GenerateRequest,
    max_pixels: int,
    resolve_image: ImageResolver | None = None,
) -> GenerationJob:
    check = _Checker()
    mode = _MODES.get(request.mode)
    if mode is None:
        raise InvalidArgument("mode", "unknown generation mode")
    resolve = resolve_image or _no_images
    specs = _mode_specs(check, request, mode, resolve)
    source = _first_image(specs)
    size = (DEFAULT_SIZE, DEFAULT_SIZE)
    if source is not None and mode is not Mode.UPSCALE:
        size = (_multiple_of_8(source.width), _multiple_of_8(source.height))
    params = _params(check, request.params, size, max_pixels)
    upscale = specs.get("upscale")
    if isinstance(upscale, UpscaleSpec):
        result = upscale.image.width * upscale.image.height * upscale.scale**2
        check.require(
            result <= UPSCALE_PIXEL_FACTOR * max_pixels,
            "upscale.scale",
            f"the result must be ≤ {UPSCALE_PIXEL_FACTOR * max_pixels} pixels",
        )
    hires = _hires(check, request.hires, params) if mode is Mode.TXT2IMG else None
    if hires is not None:
        w, h = hires.target_size(params.width, params.height)
        check.require(w * h <= max_pixels, "hires.scale", f"the result must be ≤ {max_pixels} px")
    request_id = request.request_id or current_request_id() or new_request_id()
    check.require(is_valid_request_id(request_id), "request_id", "at most 64 of A-Z a-z 0-9 _ . -")
    check.require(-10 <= request.priority <= 10, "priority", "must be between -10 and 10")
    preview = request.preview
    check.require(
        not preview.enabled or 0 <= preview.every_n_steps <= 150,
        "preview.every_n_steps",
        "must be between 1 and 150",
    )
    check.require(
        not preview.enabled or preview.method in ("", *PREVIEW_METHODS),
        "preview.method",
        f"must be one of {', '.join(PREVIEW_METHODS)}",
    )
    timeout = request.timeout.ToTimedelta().total_seconds() if request.HasField("timeout") else None
    check.require(timeout is None or timeout > 0, "timeout", "must be positive")
    check.raise_if_any()
    return GenerationJob(
        request_id=request_id,
        owner=request.owner,
        mode=mode,
        params=params,
        hires=hires,
        priority=request.priority,
        preview_every=(preview.every_n_steps or 1) if preview.enabled else 0,
        preview_max_size=preview.max_size or 256,
        preview_method=preview.method or PREVIEW_METHODS[0],
        timeout_seconds=timeout,
        **specs,
    )


def _mode_specs(
    check: _Checker, request: generator_pb2.GenerateRequest, mode: Mode, resolve: ImageResolver
) -> dict[str, object]:
    if mode is Mode.IMG2IMG:
        return {"img2img": _img2img(check, request.img2img, resolve)}
    if mode is Mode.INPAINT:
        return {
            "img2img": _img2img(check, request.img2img, resolve),
            "inpaint": _inpaint(check, request.inpaint, resolve),
        }
    if mode is Mode.UPSCALE:
        return {"upscale": _upscale(check, request.upscale, resolve)}
    if mode is Mode.VARIATION:
        return {"variation": _variation(check, request.variation, resolve)}
    return {}


def _first_image(specs: dict[str, object]) -> Image.Image | None:
    for spec in specs.values():
        for name in ("init_image", "image", "source"):
            image = getattr(spec, name, None)
            if image is not None:
                return image
    return None


def _no_images(_ref: common_pb2.ImageRef, name: str) -> Image.Image:
    raise InvalidArgument(name, "images are not accepted here")
