"""Text-to-image on a loaded diffusers pipeline, with A1111's seed conventions.

Initial noise is drawn on the CPU from one generator per image (seed + i), so a seed
gives the same image on any device and whatever the batch size; ancestral samplers get
the same per-image CPU generators for their step noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from services.common.infotext import format_infotext, png_with_infotext
from services.generator.jobs import Txt2ImgJob
from services.generator.samplers import make_scheduler, resolve_sampler

VERSION = "sdstack 0.1.0"
LATENT_FACTOR = 8

StepCallback = Callable[[int, int, int], None]
"""Called after each step with (step from 1, steps, batch number from 1)."""


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    sha256: str

    @property
    def short_hash(self) -> str:
        return self.sha256[:10]


@dataclass(frozen=True)
class RenderedImage:
    png: bytes
    seed: int
    width: int
    height: int
    infotext: str
    index: int


def initial_noise(seeds: list[int], pipe: StableDiffusionPipeline, job: Txt2ImgJob) -> torch.Tensor:
    channels = pipe.unet.config.in_channels
    shape = (channels, job.height // LATENT_FACTOR, job.width // LATENT_FACTOR)
    noise = [
        torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
        for seed in seeds
    ]
    return torch.stack(noise)


def infotext_for(job: Txt2ImgJob, seed: int, model: ModelIdentity) -> str:
    params: dict[str, object] = {
        "Steps": job.steps,
        "Sampler": job.sampler,
        "Schedule type": None if job.schedule_type == "Automatic" else job.schedule_type,
        "CFG scale": job.cfg_scale,
        "Seed": seed,
        "Size": f"{job.width}x{job.height}",
        "Model hash": model.short_hash,
        "Model": model.name,
        "Clip skip": job.clip_skip if job.clip_skip > 1 else None,
        "RNG": "CPU",
        "Version": VERSION,
    }
    return format_infotext(job.prompt, job.negative_prompt, params)


def run_txt2img(
    pipe: StableDiffusionPipeline,
    job: Txt2ImgJob,
    model: ModelIdentity,
    on_step: StepCallback,
) -> list[RenderedImage]:
    """Runs the job's batches one after another; `on_step` may raise to stop it."""
    sampler = resolve_sampler(job.sampler)
    scheduler = make_scheduler(sampler, dict(pipe.scheduler.config), job.schedule_type)
    runner = StableDiffusionPipeline(
        **{**pipe.components, "scheduler": scheduler}, requires_safety_checker=False
    )
    runner.set_progress_bar_config(disable=True)
    seeds = job.seeds()
    images: list[RenderedImage] = []
    for batch in range(job.n_iter):
        batch_seeds = seeds[batch * job.batch_size : (batch + 1) * job.batch_size]
        for image, seed in zip(
            _render_batch(runner, job, batch_seeds, batch + 1, on_step), batch_seeds, strict=True
        ):
            text = infotext_for(job, seed, model)
            images.append(
                RenderedImage(
                    png=png_with_infotext(image, text),
                    seed=seed,
                    width=image.width,
                    height=image.height,
                    infotext=text,
                    index=len(images),
                )
            )
    return images


def _render_batch(
    runner: StableDiffusionPipeline,
    job: Txt2ImgJob,
    seeds: list[int],
    batch_no: int,
    on_step: StepCallback,
) -> list[Image.Image]:
    def step_end(_pipe: object, step: int, _timestep: object, kwargs: dict) -> dict:
        on_step(step + 1, job.steps, batch_no)
        return kwargs

    device = runner.unet.device
    latents = initial_noise(seeds, runner, job).to(device=device, dtype=runner.unet.dtype)
    output = runner(
        prompt=[job.prompt] * len(seeds),
        negative_prompt=[job.negative_prompt] * len(seeds),
        width=job.width,
        height=job.height,
        num_inference_steps=job.steps,
        guidance_scale=job.cfg_scale,
        latents=latents,
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
        clip_skip=job.clip_skip - 1 or None,
        callback_on_step_end=step_end,
        output_type="pil",
    )
    return list(output.images)
