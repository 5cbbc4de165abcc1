"""Image-making modes over a loaded SD 1.x pipeline, with A1111's conventions.

txt2img, img2img (A1111 resize modes), inpaint (mask blur, masked content, only-masked at full
resolution, the final overlay), hi-res fix, tiled SD upscale, Fooocus-style variations and
A1111's cheap latent preview. Transport-free: conditioning comes in as embeddings inside a
`Sampling`, images go out as RGB PIL images, bad arguments raise `InvalidArgument`.

Every mode runs one denoising loop, `_denoise`, on the base pipeline's own components (its
unet and vae, and a scheduler from `Sampling.scheduler_factory`), so no weights are copied or
reloaded. Why our own loop rather than diffusers' img2img and inpaint pipelines:

- Seeds. Those pipelines draw the img2img noise themselves from `generator` (and the inpaint
  pipeline treats a passed `latents` as pure noise, dropping the init image), so they cannot
  take A1111 variation noise (a slerp of two seeds' noise). Here the noise is always
  `initial_noise(...)`, drawn on the CPU per image seed, and injected the way diffusers' img2img
  injects its own: `scheduler.add_noise(init_latents, noise, first_timestep)`. With plain seeds
  and a non-stochastic sampler the result equals `StableDiffusionImg2ImgPipeline`'s (tested).
- Inpainting with a regular 4-channel checkpoint needs the unmasked latents put back after
  every step; a 9-channel inpainting checkpoint takes the mask and the masked image's latents
  as extra U-Net input instead. One loop does both (`_Start.keep`, `_Start.unet_extra`).
- Step counts as A1111 counts them: hi-res fix's second pass runs exactly its own steps; and
  previews get the sampler's denoised estimate when it gives one.

The loop follows diffusers' recipe: the schedule trimmed by strength (`set_begin_index`),
`scale_model_input`, classifier-free guidance when cfg > 1, `step` with eta. Samplers that
draw noise every step (ancestral, SDE, DDIM with eta) get per-image CPU generators that
continue each seed's stream after its initial noise, as A1111's `ImageRNG` does. Images are
encoded with the VAE's mean (no sampling), so encoding needs no random numbers.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, get_args

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image, ImageOps

from services.common.errors import InvalidArgument
from services.common.generation.tasks import (
    MAX_MASK_BLUR,
    MAX_ONLY_MASKED_PADDING,
    VARIATION_STRENGTHS,
    InpaintFill,
    ResizeMode,
    VariationStrength,
)
from services.generator.deep_cache import DeepCache, check_interval, check_supported
from services.generator.prompts import ComposedPrompt, EmbedSchedule
from services.generator.step_batching import UnetRunner, run_unet_alone

LATENT_FACTOR = 8
MAX_SIDE = 8192
INPAINT_UNET_CHANNELS = 9

PixelUpscaler = Callable[[Image.Image, int, int], Image.Image]
"""Upscales an image to exactly (width, height)."""

RESIZE_MODES: tuple[str, ...] = get_args(ResizeMode)
INPAINT_FILLS: tuple[str, ...] = get_args(InpaintFill)
LATENT_UPSCALERS: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
"""A1111's latent upscale modes: name -> (interpolation, antialias)."""
PIXEL_UPSCALERS: dict[str, Image.Resampling] = {
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}
MIN_TILE = 64

# A1111 "Approx cheap" (`sd_vae_approx.cheap_approximation`): SD 1.x latent channel -> RGB.
_CHEAP_RGB = torch.tensor(
    [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ]
)


def _no_progress(step: int, total: int) -> None:
    """Default `Sampling.on_step`: progress is not reported."""


@dataclass(frozen=True)
class Sampling:
    """One batch's sampling: conditioning, sampler, steps, guidance and one seed per image.

    `on_step(step, total)` is called after every step (step from 1) and may raise to cancel.
    `on_latents` gets the batch's latents after every step, before `on_step`: the sampler's
    denoised estimate when it gives one (what A1111 previews), else the current latents.
    `run_unet` runs each U-Net pass: at once by default, or shared with other jobs' passes
    (`step_batching`).
    """

    prompt_embeds: torch.Tensor | EmbedSchedule | ComposedPrompt
    negative_embeds: torch.Tensor | EmbedSchedule
    scheduler_factory: Callable[[], SchedulerMixin]
    steps: int
    cfg_scale: float
    seeds: Sequence[int]
    subseeds: Sequence[int] = ()
    subseed_strength: float = 0.0
    eta: float | None = None
    on_step: Callable[[int, int], None] = _no_progress
    on_latents: Callable[[torch.Tensor], None] | None = None
    run_unet: UnetRunner = run_unet_alone
    deep_cache_interval: int = 0
    """DeepCache: every Nth U-Net pass runs whole, the passes between reuse its deep features
    (`deep_cache`); 0 or 1 is off."""
    eta_noise_seed_delta: int = 0
    """A1111's ENSD: step noise from seed + delta instead of the seed's own stream."""

    def __post_init__(self) -> None:
        if not self.seeds:
            raise InvalidArgument("params.seed", "at least one seed is needed")
        if self.steps < 1:
            raise InvalidArgument("params.steps", "must be at least 1")
        check_interval(self.deep_cache_interval)
        _check_unit("params.subseed_strength", self.subseed_strength)
        _check_subseeds(self.seeds, self.subseeds)

    @property
    def batch_size(self) -> int:
        return len(self.seeds)


@dataclass(frozen=True)
class _Start:
    """Where a denoising run starts. No `latents`: txt2img, from pure noise."""

    latents: torch.Tensor | None = None
    strength: float = 1.0
    exact_steps: bool = False
    noise_multiplier: float = 1.0
    keep: torch.Tensor | None = None
    """4-channel inpainting: 1 where the init latents are kept, blended back every step."""
    unet_extra: torch.Tensor | None = None
    """9-channel inpainting: mask and masked-image latents appended to the U-Net input."""

    def to(self, device: torch.device, dtype: torch.dtype) -> _Start:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return replace(
            self, latents=move(self.latents), keep=move(self.keep), unet_extra=move(self.unet_extra)
        )


@dataclass(frozen=True)
class _Conditioning:
    embeds: EmbedSchedule
    """Per step, the U-Net batch's embeddings: negative, then each sub-prompt, when guided."""
    weights: tuple[float, ...]
    """The weight of each sub-prompt (A1111 `AND`); one 1.0 for a plain prompt."""
    cfg_scale: float
    unet_extra: torch.Tensor | None

    @property
    def guided(self) -> bool:
        return self.cfg_scale > 1 or len(self.weights) > 1

    @property
    def copies(self) -> int:
        """How many times the latents go through the U-Net per step."""
        return 1 + len(self.weights) if self.guided else 1


# --- noise ---------------------------------------------------------------------------------


def initial_noise(
    shape: tuple[int, int, int],
    seeds: Sequence[int],
    subseeds: Sequence[int] = (),
    subseed_strength: float = 0.0,
) -> torch.Tensor:
    """Initial noise [n, C, H, W], drawn on the CPU: image i from its own generator (seeds[i]).

    With variation seeds and a strength above 0, each image's noise is A1111's slerp from its
    seed's noise (strength 0) toward its variation seed's noise (strength 1).
    """
    _check_subseeds(seeds, subseeds)
    vary = bool(subseeds) and subseed_strength > 0
    noises = []
    for i, seed in enumerate(seeds):
        noise = _seed_noise(seed, shape)
        if vary:
            noise = _slerp(subseed_strength, noise, _seed_noise(subseeds[i], shape))
        noises.append(noise)
    return torch.stack(noises)


def _seed_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def _slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from `low` (t=0) to `high` (t=1).

    Directions are compared along dim 1 (the height axis of a [C, H, W] tensor), as A1111's
    `slerp` does, so a variation seed and strength give A1111's noise.
    """
    if t <= 0:
        return low.clone()
    if t >= 1:
        return high.clone()
    dot = (F.normalize(low, dim=1) * F.normalize(high, dim=1)).sum(1).clamp(-1, 1)
    if dot.mean() > 0.9995:
        return torch.lerp(low, high, t)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    from_low = (torch.sin((1 - t) * omega) / sin_omega).unsqueeze(1)
    to_high = (torch.sin(t * omega) / sin_omega).unsqueeze(1)
    return from_low * low + to_high * high


def _step_generators(
    seeds: Sequence[int], shape: tuple[int, ...], delta: int = 0
) -> list[torch.Generator]:
    """CPU generators for samplers that draw noise every step (ancestral, SDE, DDIM eta > 0).

    Each continues its seed's stream after the initial noise, as A1111's `ImageRNG` does, so the
    step noise is reproducible on any device and independent of the batch. With an ENSD
    `delta`, each is a fresh stream of seed + delta, as A1111 seeds its sampler noise then.
    """
    generators = []
    for seed in seeds:
        generator = torch.Generator("cpu").manual_seed(int(seed) + delta)
        if not delta:
            torch.randn(shape, generator=generator)
        generators.append(generator)
    return generators


# --- the denoising loop --------------------------------------------------------------------


def _placement(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and dtype `model` computes in, read from its first weight. diffusers'
    `pipe._execution_device` and `ModelMixin.dtype` walk every module instead: 6 ms a job
    together, 4% of a 128² image on the tiny model (no offloading here, so no hook to find)."""
    weight = next(model.parameters())
    return weight.device, weight.dtype


@torch.no_grad()
def _denoise(
    pipe: StableDiffusionPipeline,
    s: Sampling,
    shape: tuple[int, int, int],
    start: _Start | None = None,
) -> torch.Tensor:
    """Sample latents [n, C, H, W] for the batch; see the module docstring."""
    device, dtype = _placement(pipe.unet)
    start = (start or _Start()).to(device, dtype)
    scheduler = s.scheduler_factory()
    timesteps = _timesteps(scheduler, s.steps, start, device)
    noise = initial_noise(shape, s.seeds, s.subseeds, s.subseed_strength)
    noise = noise.to(device=device, dtype=dtype) * start.noise_multiplier
    latents = _first_latents(scheduler, noise, start, timesteps)
    cond = _conditioning(pipe, s, start, shape)
    step_kwargs = _step_kwargs(scheduler, s, shape)
    cache = _deep_cache(pipe, s)
    for i, t in enumerate(timesteps):
        if cache is not None:
            cache.plan(i)
        prediction = _predict(pipe, s, scheduler, latents, t, cond.embeds.at(i + 1), cond, cache)
        output = scheduler.step(prediction, t, latents, **step_kwargs)
        latents = output.prev_sample
        if start.keep is not None:
            latents = _keep_known(scheduler, latents, start, noise, timesteps, i)
        _report(s, i + 1, len(timesteps), output, latents)
    if start.keep is not None and start.latents is not None:
        latents = start.keep * start.latents + (1 - start.keep) * latents
    return latents


def _deep_cache(pipe: StableDiffusionPipeline, s: Sampling) -> DeepCache | None:
    if s.deep_cache_interval <= 1:
        return None
    check_supported(pipe.unet)
    return DeepCache(s.deep_cache_interval)


def _timesteps(
    scheduler: SchedulerMixin, steps: int, start: _Start, device: torch.device
) -> torch.Tensor:
    total, run = _step_counts(steps, start, scheduler.config.num_train_timesteps)
    scheduler.set_timesteps(total, device=device)
    first = (total - run) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(first)
    return scheduler.timesteps[first:]


def _step_counts(steps: int, start: _Start, train_steps: int) -> tuple[int, int]:
    """(schedule length, steps to run).

    txt2img runs the whole schedule. img2img runs its last `strength` part: int(steps ×
    strength) steps as diffusers does, at least one. Hi-res fix's second pass (`exact_steps`)
    stretches the schedule so that exactly `steps` steps run, as A1111 does for hires steps.
    """
    if start.latents is None:
        return steps, steps
    if start.exact_steps:
        total = min(math.ceil(steps / start.strength), train_steps)
        return total, min(steps, total)
    return steps, min(steps, max(1, int(steps * start.strength)))


def _first_latents(
    scheduler: SchedulerMixin, noise: torch.Tensor, start: _Start, timesteps: torch.Tensor
) -> torch.Tensor:
    if start.latents is None:
        return noise * scheduler.init_noise_sigma
    first = timesteps[:1].repeat(noise.shape[0])
    return scheduler.add_noise(start.latents, noise, first)


def _conditioning(
    pipe: StableDiffusionPipeline, s: Sampling, start: _Start, shape: tuple[int, int, int]
) -> _Conditioning:
    """Embeddings per step (negative first when guided) and any 9-channel extra input,
    per image."""
    device, dtype = _placement(pipe.unet)
    parts, negative = _prompt_parts(s.prompt_embeds), _as_schedule(s.negative_embeds)
    weights = tuple(weight for weight, _ in parts)
    guided = s.cfg_scale > 1 or len(parts) > 1
    ends = tuple(sorted({*negative.ends, *(end for _, part in parts for end in part.ends)}))
    per_step = []
    for end in ends:
        texts = [_per_image(part.at(end), s.batch_size) for _, part in parts]
        if guided:
            texts.insert(0, _per_image(negative.at(end), s.batch_size))
        per_step.append(torch.cat(texts).to(device=device, dtype=dtype))
    extra = start.unet_extra
    if extra is None and _is_inpainting_model(pipe):
        extra = _unmasked_extra(pipe, shape).repeat(s.batch_size, 1, 1, 1)
    if extra is not None:
        copies = len(parts) + 1 if guided else len(parts)
        extra = torch.cat([extra] * copies).to(device=device, dtype=dtype)
    return _Conditioning(EmbedSchedule(ends, tuple(per_step)), weights, s.cfg_scale, extra)


def _as_schedule(embeds: torch.Tensor | EmbedSchedule) -> EmbedSchedule:
    return embeds if isinstance(embeds, EmbedSchedule) else EmbedSchedule.constant(embeds)


def _prompt_parts(
    embeds: torch.Tensor | EmbedSchedule | ComposedPrompt,
) -> tuple[tuple[float, EmbedSchedule], ...]:
    if isinstance(embeds, ComposedPrompt):
        return embeds.parts
    return ((1.0, _as_schedule(embeds)),)


def _per_image(embeds: torch.Tensor, count: int) -> torch.Tensor:
    if embeds.ndim != 3:
        raise ValueError(f"embeddings must be [batch, tokens, dim], got {tuple(embeds.shape)}")
    if embeds.shape[0] == count:
        return embeds
    if embeds.shape[0] != 1:
        raise ValueError(f"embeddings batch {embeds.shape[0]} does not match {count} images")
    return embeds.repeat(count, 1, 1)


def _step_kwargs(
    scheduler: SchedulerMixin, s: Sampling, shape: tuple[int, int, int]
) -> dict[str, Any]:
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if s.eta is not None and "eta" in accepted:
        kwargs["eta"] = s.eta
    if "generator" in accepted:
        kwargs["generator"] = _step_generators(s.seeds, shape, s.eta_noise_seed_delta)
    return kwargs


def _predict(
    pipe: StableDiffusionPipeline,
    s: Sampling,
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    t: torch.Tensor,
    embeds: torch.Tensor,
    cond: _Conditioning,
    cache: DeepCache | None = None,
) -> torch.Tensor:
    """The U-Net's noise prediction, with classifier-free guidance when cfg > 1, and A1111's
    composition when there are sub-prompts: uncond + cfg · Σ weightᵢ · (condᵢ − uncond)."""
    model_input = torch.cat([latents] * cond.copies) if cond.copies > 1 else latents
    model_input = scheduler.scale_model_input(model_input, t)
    if cond.unet_extra is not None:
        model_input = torch.cat([model_input, cond.unet_extra], dim=1)
    prediction = s.run_unet(pipe.unet, model_input, t, embeds, cache)
    if not cond.guided:
        return prediction
    unconditional, *texts = prediction.chunk(cond.copies)
    if cond.weights == (1.0,):
        return unconditional + cond.cfg_scale * (texts[0] - unconditional)
    composed = sum(w * (text - unconditional) for w, text in zip(cond.weights, texts, strict=True))
    return unconditional + cond.cfg_scale * composed


def _keep_known(
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    start: _Start,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    index: int,
) -> torch.Tensor:
    """Put back the unmasked init latents, noised to the next step's level (4-channel inpaint)."""
    assert start.latents is not None and start.keep is not None
    known = start.latents
    if index + 1 < len(timesteps):
        known = scheduler.add_noise(known, noise, timesteps[index + 1 : index + 2])
    return start.keep * known + (1 - start.keep) * latents


def _report(s: Sampling, step: int, total: int, output: Any, latents: torch.Tensor) -> None:
    if s.on_latents is not None:
        denoised = getattr(output, "pred_original_sample", None)
        s.on_latents(latents if denoised is None else denoised)
    s.on_step(step, total)


# --- VAE -----------------------------------------------------------------------------------


def _pixels(image: Image.Image) -> torch.Tensor:
    """RGB image -> [1, 3, H, W] in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(array).permute(2, 0, 1)[None]


@torch.no_grad()
def _encode_pixels(pipe: StableDiffusionPipeline, pixels: torch.Tensor) -> torch.Tensor:
    vae = pipe.vae
    pixels = pixels.to(*_placement(vae))
    return vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor


def _encode(pipe: StableDiffusionPipeline, image: Image.Image) -> torch.Tensor:
    return _encode_pixels(pipe, _pixels(image))


@torch.no_grad()
def _decode(pipe: StableDiffusionPipeline, latents: torch.Tensor) -> list[Image.Image]:
    vae = pipe.vae
    _, dtype = _placement(vae)
    pixels = vae.decode(latents.to(dtype) / vae.config.scaling_factor, return_dict=False)[0]
    return [image.convert("RGB") for image in pipe.image_processor.postprocess(pixels, "pil")]


def _latent_shape(pipe: StableDiffusionPipeline, width: int, height: int) -> tuple[int, int, int]:
    channels = pipe.vae.config.latent_channels
    return (channels, height // LATENT_FACTOR, width // LATENT_FACTOR)


def _is_inpainting_model(pipe: StableDiffusionPipeline) -> bool:
    return pipe.unet.config.in_channels == INPAINT_UNET_CHANNELS


def _inpaint_extra(
    pipe: StableDiffusionPipeline, pixels: torch.Tensor, repaint: torch.Tensor
) -> torch.Tensor:
    """[1, 5, h, w]: the repaint mask at latent size, then the latents of the blanked image."""
    masked = _encode_pixels(pipe, pixels * (1 - repaint))
    small = F.interpolate(repaint, size=masked.shape[-2:]).to(masked)
    return torch.cat([small, masked], dim=1)


def _unmasked_extra(pipe: StableDiffusionPipeline, shape: tuple[int, int, int]) -> torch.Tensor:
    """What A1111 gives an inpainting checkpoint outside inpaint: all repaint, a blank image."""
    size = (shape[1] * LATENT_FACTOR, shape[2] * LATENT_FACTOR)
    return _inpaint_extra(pipe, torch.zeros(1, 3, *size), torch.ones(1, 1, *size))


# --- txt2img and img2img -------------------------------------------------------------------


def txt2img(
    pipe: StableDiffusionPipeline, s: Sampling, width: int, height: int
) -> list[Image.Image]:
    """One image per seed at width×height."""
    _check_size(width, height)
    return _decode(pipe, _denoise(pipe, s, _latent_shape(pipe, width, height)))


def img2img(
    pipe: StableDiffusionPipeline,
    s: Sampling,
    init: Image.Image,
    *,
    strength: float,
    width: int,
    height: int,
    resize_mode: ResizeMode = "just_resize",
    initial_noise_multiplier: float = 1.0,
) -> list[Image.Image]:
    """One image per seed from `init`, fitted to width×height by `resize_mode`.

    The per-seed CPU noise of `initial_noise` is added to the init latents at the strength's
    first timestep (see the module docstring). Strength 0 returns the fitted image untouched.
    """
    _check_unit("img2img.denoising_strength", strength)
    _check_size(width, height)
    _check_choice("img2img.resize_mode", resize_mode, RESIZE_MODES)
    _check_range("img2img.initial_noise_multiplier", initial_noise_multiplier, 0.0, 1.5)
    image = _to_rgb(init)
    if strength == 0:
        mode = "just_resize" if resize_mode == "latent_upscale" else resize_mode
        return [resize_image(image, mode, width, height) for _ in s.seeds]
    latents = _init_latents(pipe, image, resize_mode, width, height)
    start = _Start(
        latents=latents.repeat(s.batch_size, 1, 1, 1),
        strength=strength,
        noise_multiplier=initial_noise_multiplier,
    )
    return _decode(pipe, _denoise(pipe, s, _shape_of(latents), start))


def _init_latents(
    pipe: StableDiffusionPipeline, image: Image.Image, mode: str, width: int, height: int
) -> torch.Tensor:
    if mode != "latent_upscale":
        return _encode(pipe, resize_image(image, mode, width, height))
    own_size = (_floor8(image.width), _floor8(image.height))
    if image.size != own_size:
        image = image.resize(own_size, Image.Resampling.LANCZOS)
    latents = _encode(pipe, image)
    size = (height // LATENT_FACTOR, width // LATENT_FACTOR)
    return F.interpolate(latents, size=size, mode="bilinear")


def _shape_of(latents: torch.Tensor) -> tuple[int, int, int]:
    channels, height, width = latents.shape[1:]
    return (channels, height, width)


def resize_image(image: Image.Image, mode: str, width: int, height: int) -> Image.Image:
    """Fit `image` to width×height like A1111's `images.resize_image` (Lanczos).

    just_resize stretches; crop_and_resize keeps the aspect ratio, covers and crops the centre;
    resize_and_fill keeps it, fits inside and fills the bands by stretching the edge pixels.
    """
    if image.size == (width, height):
        return image.copy()
    if mode == "crop_and_resize":
        return _crop_and_resize(image, width, height)
    if mode == "resize_and_fill":
        return _resize_and_fill(image, width, height)
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _crop_and_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    wider = width / height > image.width / image.height
    scaled_w = width if wider else max(1, image.width * height // image.height)
    scaled_h = max(1, image.height * width // image.width) if wider else height
    scaled = image.resize((scaled_w, scaled_h), Image.Resampling.LANCZOS)
    left, top = scaled_w // 2 - width // 2, scaled_h // 2 - height // 2
    return scaled.crop((left, top, left + width, top + height))


def _resize_and_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    narrower = width / height < image.width / image.height
    scaled_w = width if narrower else max(1, image.width * height // image.height)
    scaled_h = max(1, image.height * width // image.width) if narrower else height
    scaled = np.asarray(image.resize((scaled_w, scaled_h), Image.Resampling.LANCZOS))
    left, top = width // 2 - scaled_w // 2, height // 2 - scaled_h // 2
    pads = [(top, height - scaled_h - top), (left, width - scaled_w - left)]
    pads += [(0, 0)] * (scaled.ndim - 2)
    return Image.fromarray(np.pad(scaled, pads, mode="edge"), image.mode)


# --- inpaint -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _InpaintArea:
    """What the sampler sees (`work_*`, width×height) and how it goes back into `original`."""

    original: Image.Image
    overlay: Image.Image
    work_image: Image.Image
    work_mask: Image.Image
    crop: tuple[int, int, int, int] | None


def inpaint(
    pipe: StableDiffusionPipeline,
    s: Sampling,
    init: Image.Image,
    mask: Image.Image,
    *,
    strength: float = 0.75,
    mask_blur: int | tuple[int, int] = 4,
    fill: InpaintFill = "original",
    only_masked: bool = False,
    padding: int = 32,
    invert: bool = False,
    width: int,
    height: int,
    resize_mode: ResizeMode = "just_resize",
) -> list[Image.Image]:
    """Repaint where `mask` is white (black with `invert`), A1111 style.

    The mask is Gaussian-blurred by `mask_blur` (one radius, or horizontal and vertical).
    `only_masked` crops the mask's bounding box plus `padding`, widened to width:height,
    samples that crop at width×height and pastes it back, so the output has the init image's
    size; otherwise the image is fitted to width×height by `resize_mode`. Always finishes
    with A1111's overlay: the original composited back outside the blurred mask, so pixels
    where it is 0 are exactly the input's.
    """
    blur = mask_blur if isinstance(mask_blur, tuple) else (mask_blur, mask_blur)
    _check_inpaint(strength, blur, fill, padding, width, height, resize_mode)
    image = _to_rgb(init)
    repaint = _repaint_mask(image, mask, invert)
    area = _inpaint_area(image, repaint, blur, only_masked, padding, (width, height), resize_mode)
    if strength == 0:
        return [area.original.copy() for _ in s.seeds]
    work = _fill_masked(area.work_image, area.work_mask) if fill == "fill" else area.work_image
    start = _inpaint_start(pipe, s, work, area.work_mask, fill, strength)
    assert start.latents is not None
    generated = _decode(pipe, _denoise(pipe, s, _shape_of(start.latents), start))
    return [_paste_back(picture, area) for picture in generated]


def _check_inpaint(
    strength: float,
    mask_blur: tuple[int, int],
    fill: str,
    padding: int,
    width: int,
    height: int,
    resize_mode: str,
) -> None:
    _check_unit("img2img.denoising_strength", strength)
    same = mask_blur[0] == mask_blur[1]
    _check_range(
        "inpaint.mask_blur" if same else "inpaint.mask_blur_x", mask_blur[0], 0, MAX_MASK_BLUR
    )
    _check_range("inpaint.mask_blur_y", mask_blur[1], 0, MAX_MASK_BLUR)
    _check_choice("inpaint.fill", fill, INPAINT_FILLS)
    _check_range("inpaint.only_masked_padding", padding, 0, MAX_ONLY_MASKED_PADDING)
    _check_size(width, height)
    _check_choice("img2img.resize_mode", resize_mode, RESIZE_MODES[:3])


def _repaint_mask(image: Image.Image, mask: Image.Image, invert: bool) -> Image.Image:
    """The mask as L (255 = repaint); a mask with transparency is read from its alpha (A1111)."""
    if mask.size != image.size:
        rule = f"must be the same size as the image ({image.width}x{image.height})"
        raise InvalidArgument("inpaint.mask", rule)
    gray = _alpha_mask(mask)
    if gray is None:
        gray = mask.convert("L")
    if invert:
        gray = ImageOps.invert(gray)
    if gray.getbbox() is None:
        painted = "black" if invert else "white"
        raise InvalidArgument("inpaint.mask", f"marks nothing to repaint: paint the area {painted}")
    return gray


def _alpha_mask(mask: Image.Image) -> Image.Image | None:
    if mask.mode not in ("RGBA", "LA", "PA") and "transparency" not in mask.info:
        return None
    alpha = mask.convert("RGBA").getchannel("A")
    if alpha.getextrema() == (255, 255):
        return None
    return alpha.point(lambda v: 255 if v > 128 else 0)


def blur_mask(mask: Image.Image, radius: float, radius_y: float | None = None) -> Image.Image:
    """A1111's mask blur: a Gaussian per axis (horizontal `radius`, vertical `radius_y`,
    default the same), sigma = radius, kernel 2·int(2.5·radius+0.5)+1.

    Borders are mirrored (OpenCV's default). Pixels farther than the kernel's half width from
    any painted pixel stay exactly 0.
    """
    values = np.asarray(mask.convert("L"), dtype=np.float32)
    values = _gaussian_along(values, radius, axis=1)
    values = _gaussian_along(values, radius if radius_y is None else radius_y, axis=0)
    blurred = np.clip(np.round(values), 0, 255).astype(np.uint8)
    return Image.fromarray(blurred, "L")


def _gaussian_along(values: np.ndarray, radius: float, axis: int) -> np.ndarray:
    """`values` [h, w] blurred along rows (axis 1) or columns (axis 0), borders mirrored."""
    if radius <= 0:
        return values
    half = int(2.5 * radius + 0.5)
    offsets = torch.arange(-half, half + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2.0 * radius**2))
    kernel /= kernel.sum()
    widths = [(0, 0), (0, 0)]
    widths[axis] = (half, half)
    padded = torch.from_numpy(np.pad(values, widths, mode="reflect"))[None, None]
    shape = (1, 1, 1, -1) if axis == 1 else (1, 1, -1, 1)
    return F.conv2d(padded, kernel.view(shape))[0, 0].numpy()


def _inpaint_area(
    image: Image.Image,
    repaint: Image.Image,
    mask_blur: tuple[int, int],
    only_masked: bool,
    padding: int,
    size: tuple[int, int],
    resize_mode: str,
) -> _InpaintArea:
    blurred = blur_mask(repaint, *mask_blur)
    width, height = size
    if only_masked:
        box = _crop_region(blurred.getbbox() or repaint.getbbox(), padding, size, image.size)
        work_image = resize_image(image.crop(box), "resize_and_fill", width, height)
        work_mask = resize_image(blurred.crop(box), "resize_and_fill", width, height)
        return _InpaintArea(image, blurred, work_image, work_mask, box)
    fitted = resize_image(image, resize_mode, width, height)
    fitted_mask = resize_image(blurred, resize_mode, width, height)
    overlay = fitted_mask.point(lambda v: min(255, 2 * v))
    return _InpaintArea(fitted, overlay, fitted, fitted_mask, None)


def _crop_region(
    bbox: tuple[int, int, int, int] | None,
    padding: int,
    processing: tuple[int, int],
    image_size: tuple[int, int],
) -> tuple[int, int, int, int]:
    """The masked bounding box plus padding, widened to the processing aspect ratio (A1111)."""
    assert bbox is not None
    image_w, image_h = image_size
    x1, y1, x2, y2 = bbox
    x1, y1 = max(x1 - padding, 0), max(y1 - padding, 0)
    x2, y2 = min(x2 + padding, image_w), min(y2 + padding, image_h)
    ratio = processing[0] / processing[1]
    if (x2 - x1) / (y2 - y1) > ratio:
        y1, y2 = _widen(y1, y2, int((x2 - x1) / ratio) - (y2 - y1), image_h)
    else:
        x1, x2 = _widen(x1, x2, int((y2 - y1) * ratio) - (x2 - x1), image_w)
    return x1, y1, x2, y2


def _widen(low: int, high: int, extra: int, limit: int) -> tuple[int, int]:
    """Grow [low, high) by `extra` around its centre, shifted and clipped to stay in [0, limit)."""
    low, high = low - extra // 2, high + extra - extra // 2
    if high > limit:
        low, high = low - (high - limit), limit
    if low < 0:
        low, high = 0, min(high - low, limit)
    return low, high


def _fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111 "fill": the masked area starts from the blurred colours around it.

    Done as push-pull (a weighted image pyramid), which reaches into large holes in linear time.
    """
    rgb = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    keep = 1 - torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None] / 255
    around = _push_pull(rgb * keep, keep)
    filled = rgb * keep + around * (1 - keep)
    array = filled[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(array, "RGB")


def _push_pull(weighted: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    estimate = weighted / weight.clamp_min(1e-6)
    if min(weight.shape[-2:]) <= 1 or bool((weight >= 1).all()):
        return estimate
    coarse = _push_pull(
        F.avg_pool2d(weighted, 2, ceil_mode=True), F.avg_pool2d(weight, 2, ceil_mode=True)
    )
    smooth = F.interpolate(coarse, size=weight.shape[-2:], mode="bilinear", align_corners=False)
    confidence = weight.clamp(0, 1)
    return estimate * confidence + smooth * (1 - confidence)


def _inpaint_start(
    pipe: StableDiffusionPipeline,
    s: Sampling,
    work: Image.Image,
    work_mask: Image.Image,
    fill: str,
    strength: float,
) -> _Start:
    latents = _encode(pipe, work)
    shape = _shape_of(latents)
    repaint = _latent_mask(work_mask, shape).to(latents)
    batch = latents.repeat(s.batch_size, 1, 1, 1)
    if fill == "latent_noise":
        noise = initial_noise(shape, s.seeds, s.subseeds, s.subseed_strength).to(batch)
        batch = batch * (1 - repaint) + noise * repaint
    elif fill == "latent_nothing":
        batch = batch * (1 - repaint)
    if not _is_inpainting_model(pipe):
        return _Start(latents=batch, strength=strength, keep=1 - repaint)
    binary = torch.from_numpy(np.asarray(work_mask, dtype=np.float32) / 255).round()
    extra = _inpaint_extra(pipe, _pixels(work), binary[None, None])
    return _Start(latents=batch, strength=strength, unet_extra=extra.repeat(s.batch_size, 1, 1, 1))


def _latent_mask(mask: Image.Image, shape: tuple[int, int, int]) -> torch.Tensor:
    """[1, 1, h, w] of 0/1: the blurred mask at latent size, rounded (A1111's latent mask)."""
    small = mask.resize((shape[2], shape[1]), Image.Resampling.BICUBIC)
    values = np.round(np.asarray(small, dtype=np.float32) / 255)
    return torch.from_numpy(values)[None, None]


def _paste_back(generated: Image.Image, area: _InpaintArea) -> Image.Image:
    if area.crop is not None:
        x1, y1, x2, y2 = area.crop
        canvas = area.original.copy()
        canvas.paste(resize_image(generated, "crop_and_resize", x2 - x1, y2 - y1), (x1, y1))
        generated = canvas
    return _overlay(generated, area.original, area.overlay)


def _overlay(generated: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's apply_overlay: the original where the mask is 0, the new image where it is 255."""
    alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255
    new = np.asarray(generated.convert("RGB"), dtype=np.float32)
    old = np.asarray(original, dtype=np.float32)
    mixed = np.rint(old * (1 - alpha) + new * alpha)
    return Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8), "RGB")


# --- hi-res fix ----------------------------------------------------------------------------


def hires_fix(
    pipe: StableDiffusionPipeline,
    first: Sampling,
    second: Sampling,
    *,
    width: int,
    height: int,
    scale: float = 2.0,
    resize_x: int = 0,
    resize_y: int = 0,
    upscaler: str | PixelUpscaler = "Latent",
    denoising_strength: float = 0.7,
) -> list[Image.Image]:
    """A1111 hi-res fix: txt2img at width×height, upscale, then an img2img pass with `second`.

    The target is width×height × `scale` (rounded down to multiples of 8), or resize_x×resize_y
    (one of them 0 keeps the aspect ratio; both given: upscale to cover, then crop the centre).
    Latent upscalers interpolate the latents; "Lanczos", "Nearest" or a callable upscale the
    decoded pixels, which are encoded again. The second pass runs exactly `second.steps` steps.
    """
    _check_size(width, height)
    _check_unit("hires.denoising_strength", denoising_strength)
    cover, target = hires_sizes(width, height, scale, resize_x, resize_y)
    latent_mode = _latent_upscaler(upscaler)
    if second.batch_size != first.batch_size:
        raise InvalidArgument("hires.seed", "the second pass needs one seed per image")
    latents = _denoise(pipe, first, _latent_shape(pipe, width, height))
    if latent_mode is None:
        pixel_upscale = _pixel_upscaler(upscaler)
        big = [_upscale_to(pixel_upscale, image, cover) for image in _decode(pipe, latents)]
        if denoising_strength == 0:
            return [_center_crop(image, target) for image in big]
        upscaled = torch.cat([_encode(pipe, image) for image in big])
    else:
        upscaled = _upscale_latents(latents, latent_mode, cover)
    upscaled = _center_crop_latents(upscaled, target)
    if denoising_strength == 0:
        return _decode(pipe, upscaled)
    start = _Start(latents=upscaled, strength=denoising_strength, exact_steps=True)
    return _decode(pipe, _denoise(pipe, second, _shape_of(upscaled), start))


def hires_sizes(
    width: int, height: int, scale: float, resize_x: int = 0, resize_y: int = 0
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(size to upscale to, final size) of a hi-res fix as A1111 computes them; multiples of 8."""
    if not resize_x and not resize_y:
        if not 1 < scale <= 4:
            raise InvalidArgument("hires.scale", "must be more than 1 and at most 4")
        size = (_floor8(width * scale), _floor8(height * scale))
        return _checked_hires(size, size)
    _check_resize("hires.resize_x", resize_x)
    _check_resize("hires.resize_y", resize_y)
    if not resize_y:
        size = (resize_x, _floor8(resize_x * height // width))
        return _checked_hires(size, size)
    if not resize_x:
        size = (_floor8(resize_y * width // height), resize_y)
        return _checked_hires(size, size)
    if width / height < resize_x / resize_y:
        cover = (resize_x, _floor8(resize_x * height // width))
    else:
        cover = (_floor8(resize_y * width // height), resize_y)
    return _checked_hires(cover, (resize_x, resize_y))


def _checked_hires(
    cover: tuple[int, int], target: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    if max(cover) > MAX_SIDE:
        raise InvalidArgument("hires.scale", f"the upscaled size must be at most {MAX_SIDE}")
    return cover, target


def _latent_upscaler(upscaler: str | PixelUpscaler) -> tuple[str, bool] | None:
    if callable(upscaler):
        return None
    if upscaler in LATENT_UPSCALERS:
        return LATENT_UPSCALERS[upscaler]
    if upscaler in PIXEL_UPSCALERS:
        return None
    raise InvalidArgument("hires.upscaler", f"unknown upscaler {upscaler!r}; see ListUpscalers")


def _upscale_latents(
    latents: torch.Tensor, mode: tuple[str, bool], size: tuple[int, int]
) -> torch.Tensor:
    interpolation, antialias = mode
    latent_size = (size[1] // LATENT_FACTOR, size[0] // LATENT_FACTOR)
    return F.interpolate(latents, size=latent_size, mode=interpolation, antialias=antialias)


def _pixel_upscaler(upscaler: str | PixelUpscaler) -> PixelUpscaler:
    if callable(upscaler):
        return upscaler
    resample = PIXEL_UPSCALERS[upscaler]
    return lambda image, width, height: image.resize((width, height), resample)


def _upscale_to(upscale: PixelUpscaler, image: Image.Image, size: tuple[int, int]) -> Image.Image:
    result = _to_rgb(upscale(image, *size))
    if result.size != size:
        result = result.resize(size, Image.Resampling.LANCZOS)
    return result


def _center_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    left, top = (image.width - size[0]) // 2, (image.height - size[1]) // 2
    return image.crop((left, top, left + size[0], top + size[1]))


def _center_crop_latents(latents: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop to size (pixels) around the centre, as A1111's truncate_x/y does."""
    width, height = size[0] // LATENT_FACTOR, size[1] // LATENT_FACTOR
    left = (latents.shape[3] - width) // 2
    top = (latents.shape[2] - height) // 2
    return latents[:, :, top : top + height, left : left + width]


# --- tiled refine (SD upscale) and variations ----------------------------------------------


def tiled_refine(
    pipe: StableDiffusionPipeline,
    s: Sampling,
    image: Image.Image,
    *,
    tile: int = 512,
    overlap: int = 64,
    strength: float = 0.382,
) -> Image.Image:
    """img2img over overlapping tiles of an (already upscaled) image, stitched without seams.

    Tiles are spread evenly so neighbours overlap by at least `overlap` pixels and cross-fade
    linearly there. Tile i (row-major) uses seed `s.seeds[0] + i`; `s.on_step` sees the steps
    of all tiles as one run. The output has the input's size.
    """
    _check_tiles(tile, overlap)
    _check_unit("upscale.denoising_strength", strength)
    source = _to_rgb(image)
    if strength == 0:
        return source.copy()
    canvas = _pad_to_multiple(source, LATENT_FACTOR)
    xs, ys = _tile_starts(canvas.width, tile, overlap), _tile_starts(canvas.height, tile, overlap)
    tile_w, tile_h = min(tile, canvas.width), min(tile, canvas.height)
    total = np.zeros((canvas.height, canvas.width, 3), np.float32)
    weights = np.zeros((canvas.height, canvas.width, 1), np.float32)
    for index, (row, col) in enumerate((r, c) for r in range(len(ys)) for c in range(len(xs))):
        x, y = xs[col], ys[row]
        crop = canvas.crop((x, y, x + tile_w, y + tile_h))
        sampling = _tile_sampling(s, index, len(xs) * len(ys))
        out = img2img(pipe, sampling, crop, strength=strength, width=tile_w, height=tile_h)[0]
        weight = np.outer(_ramp(ys, row, tile_h), _ramp(xs, col, tile_w))[..., None]
        total[y : y + tile_h, x : x + tile_w] += np.asarray(out, dtype=np.float32) * weight
        weights[y : y + tile_h, x : x + tile_w] += weight
    stitched = np.clip(np.rint(total / weights), 0, 255).astype(np.uint8)
    return Image.fromarray(stitched, "RGB").crop((0, 0, source.width, source.height))


def upscale_then_refine(
    pipe: StableDiffusionPipeline,
    s: Sampling,
    image: Image.Image,
    *,
    scale: float,
    upscaler: Callable[[Image.Image, float], Image.Image],
    tile: int = 512,
    overlap: int = 64,
    strength: float = 0.382,
) -> Image.Image:
    """Fooocus/A1111 SD upscale: `upscaler(image, scale)`, then `tiled_refine` of the result."""
    _check_range("upscale.scale", scale, 1.0, 8.0)
    _check_tiles(tile, overlap)
    _check_unit("upscale.denoising_strength", strength)
    upscaled = upscaler(_to_rgb(image), scale)
    return tiled_refine(pipe, s, upscaled, tile=tile, overlap=overlap, strength=strength)


def _check_tiles(tile: int, overlap: int) -> None:
    if tile < MIN_TILE or tile % LATENT_FACTOR:
        raise InvalidArgument("upscale.tile_size", f"must be a multiple of 8, at least {MIN_TILE}")
    if not 0 <= overlap <= tile // 2:
        raise InvalidArgument("upscale.tile_overlap", "must be between 0 and half the tile size")


def _pad_to_multiple(image: Image.Image, multiple: int) -> Image.Image:
    width = max(multiple, math.ceil(image.width / multiple) * multiple)
    height = max(multiple, math.ceil(image.height / multiple) * multiple)
    if (width, height) == image.size:
        return image
    pads = [(0, height - image.height), (0, width - image.width), (0, 0)]
    return Image.fromarray(np.pad(np.asarray(image), pads, mode="edge"), "RGB")


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    span = length - tile
    return [round(i * span / (count - 1)) for i in range(count)]


def _ramp(starts: list[int], index: int, size: int) -> np.ndarray:
    """1-D tile weight: rising across the overlap with the previous tile, falling into the next.

    A neighbour's ramp over the same overlap is the mirror image, so the two sum to 1.
    """
    weight = np.ones(size, np.float32)
    if index > 0:
        shared = starts[index - 1] + size - starts[index]
        if shared > 0:
            rising = (np.arange(shared) + 0.5) / shared
            weight[:shared] = np.minimum(weight[:shared], rising)
    if index + 1 < len(starts):
        shared = starts[index] + size - starts[index + 1]
        if shared > 0:
            falling = (np.arange(shared)[::-1] + 0.5) / shared
            weight[size - shared :] = np.minimum(weight[size - shared :], falling)
    return weight


def _tile_sampling(s: Sampling, index: int, count: int) -> Sampling:
    def on_step(step: int, total: int) -> None:
        s.on_step(index * total + step, count * total)

    subseeds = [s.subseeds[0] + index] if s.subseeds else ()
    return replace(s, seeds=[s.seeds[0] + index], subseeds=subseeds, on_step=on_step)


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
    if strength not in VARIATION_STRENGTHS:
        raise InvalidArgument("variation.strength", "must be subtle or strong")
    image = _to_rgb(source)
    width, height = _floor8(image.width), _floor8(image.height)
    results = img2img(
        pipe, s, image, strength=VARIATION_STRENGTHS[strength], width=width, height=height
    )
    return [
        r if r.size == image.size else r.resize(image.size, Image.Resampling.LANCZOS)
        for r in results
    ]


# --- previews ------------------------------------------------------------------------------


def full_preview(pipe: StableDiffusionPipeline, latents: torch.Tensor) -> Image.Image:
    """A1111's "Full" preview of the first image: the VAE decodes it, as at the end."""
    return _decode(pipe, latents[:1])[0]


def cheap_preview(latents: torch.Tensor) -> Image.Image:
    """A1111's "Approx cheap" preview of the first image: a linear latent -> RGB projection.

    Takes [n, 4, h, w] or [4, h, w] SD 1.x latents; returns an RGB image of h×w.
    """
    first = latents[0] if latents.ndim == 4 else latents
    rgb = torch.einsum("chw,cr->rhw", first[:4].detach().float().cpu(), _CHEAP_RGB)
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB")


# --- small helpers -------------------------------------------------------------------------


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB; transparent pixels are flattened onto white, as A1111's img2img does by default."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _floor8(value: float) -> int:
    return max(LATENT_FACTOR, int(value) // LATENT_FACTOR * LATENT_FACTOR)


def _check_unit(field: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise InvalidArgument(field, "must be between 0 and 1")


def _check_range(field: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidArgument(field, f"must be between {low:g} and {high:g}")


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidArgument(field, f"must be one of {', '.join(choices)}")


def _check_size(width: int, height: int) -> None:
    for field, value in (("params.width", width), ("params.height", height)):
        if value < LATENT_FACTOR or value > MAX_SIDE or value % LATENT_FACTOR:
            raise InvalidArgument(field, f"must be a multiple of 8 between 8 and {MAX_SIDE}")


def _check_resize(field: str, value: int) -> None:
    if value < 0 or value > MAX_SIDE or value % LATENT_FACTOR:
        raise InvalidArgument(field, f"must be 0 or a multiple of 8 up to {MAX_SIDE}")


def _check_subseeds(seeds: Sequence[int], subseeds: Sequence[int]) -> None:
    if subseeds and len(subseeds) != len(seeds):
        raise InvalidArgument("params.subseed", "needs one variation seed per image")
