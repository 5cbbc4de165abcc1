"""The one denoising loop every mode runs, on the base pipeline's own components.

It uses the pipeline's unet and vae and a scheduler from `Sampling.scheduler_factory`, so no
weights are copied or reloaded. Why our own loop rather than diffusers' img2img and inpaint
pipelines:

- Seeds. Those pipelines draw the img2img noise themselves from `generator` (and the inpaint
  pipeline treats a passed `latents` as pure noise, dropping the init image), so they cannot
  take A1111 variation noise (a slerp of two seeds' noise). Here the noise is always
  `initial_noise(...)`, drawn on the CPU per image seed, and injected the way diffusers' img2img
  injects its own: `scheduler.add_noise(init_latents, noise, first_timestep)`. With plain seeds
  and a non-stochastic sampler the result equals `StableDiffusionImg2ImgPipeline`'s (tested).
- Inpainting with a regular 4-channel checkpoint needs the unmasked latents put back after
  every step; a 9-channel inpainting checkpoint takes the mask and the masked image's latents
  as extra U-Net input instead. One loop does both (`Start.keep`, `Start.unet_extra`).
- Step counts as A1111 counts them: hi-res fix's second pass runs exactly its own steps; and
  previews get the sampler's denoised estimate when it gives one.

The loop follows diffusers' recipe: the schedule trimmed by strength (`set_begin_index`),
`scale_model_input`, classifier-free guidance when cfg > 1, `step` with eta. Samplers that
draw noise every step (ancestral, SDE, DDIM with eta) get per-image CPU generators that
continue each seed's stream after its initial noise (`sampling.step_generators`).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from services.generator.deep_cache import DeepCache, check_supported
from services.generator.modes.sampling import Sampling, Start, initial_noise, step_generators
from services.generator.modes.vae import is_inpainting_model, placement, unmasked_extra
from services.generator.prompts import ComposedPrompt, EmbedSchedule


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


@torch.no_grad()
def denoise(
    pipe: StableDiffusionPipeline,
    s: Sampling,
    shape: tuple[int, int, int],
    start: Start | None = None,
) -> torch.Tensor:
    """Sample latents [n, C, H, W] for the batch; see the module docstring."""
    # 1. The scheduler and its timesteps, trimmed by the start's strength.
    device, dtype = placement(pipe.unet)
    start = (start or Start()).to(device, dtype)
    scheduler = s.scheduler_factory()
    timesteps = _timesteps(scheduler, s.steps, start, device)
    # 2. The seeds' noise, and the first latents: noise alone, or the start's latents noised.
    noise = initial_noise(shape, s.seeds, s.subseeds, s.subseed_strength)
    noise = noise.to(device=device, dtype=dtype) * start.noise_multiplier
    latents = _first_latents(scheduler, noise, start, timesteps)
    # 3. The prompts' embeddings per step, the sampler's extra arguments, DeepCache.
    cond = _conditioning(pipe, s, start, shape)
    step_kwargs = _step_kwargs(scheduler, s, shape)
    cache = _deep_cache(pipe, s)
    # 4. The loop: predict the noise, step, put back what inpainting keeps, report.
    for i, t in enumerate(timesteps):
        if cache is not None:
            cache.plan(i)
        prediction = _predict(pipe, s, scheduler, latents, t, cond.embeds.at(i + 1), cond, cache)
        output = scheduler.step(prediction, t, latents, **step_kwargs)
        latents = output.prev_sample
        if start.keep is not None:
            latents = _keep_known(scheduler, latents, start, noise, timesteps, i)
        _report(s, i + 1, len(timesteps), output, latents)
    # 5. 4-channel inpainting: the kept latents exactly as they came.
    if start.keep is not None and start.latents is not None:
        latents = start.keep * start.latents + (1 - start.keep) * latents
    return latents


def _deep_cache(pipe: StableDiffusionPipeline, s: Sampling) -> DeepCache | None:
    if s.settings.deep_cache_interval <= 1:
        return None
    check_supported(pipe.unet)
    return DeepCache(s.settings.deep_cache_interval)


def _timesteps(
    scheduler: SchedulerMixin, steps: int, start: Start, device: torch.device
) -> torch.Tensor:
    total, run = _step_counts(steps, start, scheduler.config.num_train_timesteps)
    scheduler.set_timesteps(total, device=device)
    first = (total - run) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(first)
    return scheduler.timesteps[first:]


def _step_counts(steps: int, start: Start, train_steps: int) -> tuple[int, int]:
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
    scheduler: SchedulerMixin, noise: torch.Tensor, start: Start, timesteps: torch.Tensor
) -> torch.Tensor:
    if start.latents is None:
        return noise * scheduler.init_noise_sigma
    first = timesteps[:1].repeat(noise.shape[0])
    return scheduler.add_noise(start.latents, noise, first)


def _conditioning(
    pipe: StableDiffusionPipeline, s: Sampling, start: Start, shape: tuple[int, int, int]
) -> _Conditioning:
    """Embeddings per step (negative first when guided) and any 9-channel extra input,
    per image."""
    device, dtype = placement(pipe.unet)
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
    if extra is None and is_inpainting_model(pipe):
        extra = unmasked_extra(pipe, shape).repeat(s.batch_size, 1, 1, 1)
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
    if s.settings.eta is not None and "eta" in accepted:
        kwargs["eta"] = s.settings.eta
    if "generator" in accepted:
        kwargs["generator"] = step_generators(s.seeds, shape, s.settings.eta_noise_seed_delta)
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
    start: Start,
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
