"""Turns one validated job into finished PNGs on a loaded checkpoint.

The recipe, in order: the checkpoint's pipeline (from the cache) → the job's LoRAs as peft
adapters (switched, never reloaded) → the VAE → A1111-weighted prompt embeddings → the
mode's recipe (`modes`), batch by batch → the infotext and the PNG of each image. A pixel
upscale (an upscale without tiled refine) samples nothing, so it loads no checkpoint.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from diffusers.models.autoencoders.vae import DecoderTiny
from PIL import Image

from services.common.errors import InvalidArgument, NotFound
from services.common.generation import (
    PREVIEW_METHODS,
    HiresOptions,
    Img2Img,
    Inpaint,
    Preview,
    Txt2Img,
    Upscale,
    UpscaleOptions,
    Variation,
)
from services.common.generation.infotext import labelled_values
from services.common.generation.tasks import denoising_strength
from services.common.infotext import format_infotext, format_lora_hashes, png_with_infotext
from services.common.proto.sdstack.v1 import common_pb2
from services.common.sd.model_registry import ModelRegistry, StoredModel
from services.generator import modes
from services.generator.jobs import GenerationJob
from services.generator.loras import LoraPlan, LoraRequest
from services.generator.model_cache import ModelCache
from services.generator.prompts import ComposedPrompt, EmbedSchedule, PromptEncoder
from services.generator.samplers import make_scheduler, resolve_sampler
from services.generator.seamless import set_seamless
from services.generator.step_batching import JobTurn
from services.generator.taesd import load_decoder, taesd_preview
from services.generator.upscalers import Upscaler, lanczos, load_upscaler, nearest, resize_to
from services.generator.vaes import bound_memory, load_vae

VERSION = "sdstack 0.1.0"
ScaleUpscaler = Callable[[Image.Image, float], Image.Image]
"""image × scale → the upscaled image (a `modes.PixelUpscaler` takes the size instead)."""
PIXEL_UPSCALERS: dict[str, ScaleUpscaler] = {"Lanczos": lanczos, "Nearest": nearest}
"""The built-in pixel upscalers; the others are ESRGAN-family files in the store."""
BUILTIN_UPSCALERS = (*PIXEL_UPSCALERS, *modes.LATENT_UPSCALERS)
"""Every built-in upscaler's name: pixel ones, then the latent ones (hi-res fix only)."""

StepCallback = Callable[[int, int], None]
"""Called after every denoising step with (steps done in the job, steps in the job)."""
PreviewCallback = Callable[[Image.Image], None]


@dataclass(frozen=True)
class RenderedImage:
    png: bytes
    seed: int
    subseed: int
    subseed_strength: float
    width: int
    height: int
    infotext: str
    index: int
    vae: StoredModel | None = None
    loras: tuple[tuple[StoredModel, float, float], ...] = ()
    """The LoRAs used: (file, U-Net weight, text-encoder weight)."""


@dataclass(frozen=True)
class _Resolved:
    """The files a job uses besides its checkpoint: LoRAs and VAE, with their hashes."""

    loras: list[tuple[StoredModel, float, float]]
    vae: StoredModel | None


class Renderer:
    def __init__(self, registry: ModelRegistry, cache: ModelCache) -> None:
        self.registry = registry
        self.cache = cache
        self._vaes: OrderedDict[str, AutoencoderKL] = OrderedDict()
        self._upscalers: OrderedDict[str, Upscaler] = OrderedDict()
        self._taesd: tuple[str, DecoderTiny] | None = None
        """The TAESD decoder last used, by its file's sha256."""
        self._lock = threading.Lock()

    def render(
        self,
        job: GenerationJob,
        model: StoredModel,
        on_step: StepCallback,
        on_preview: PreviewCallback | None = None,
        turn: JobTurn | None = None,
    ) -> list[RenderedImage]:
        """The job's images. With a `turn`, its U-Net passes are shared with other jobs'.

        A pixel upscale needs no checkpoint: `model` is only named in its infotext, never
        fetched or loaded (4 GB for SD 1.5)."""
        resolved = self._resolve(job)
        pixel_upscale = _pixel_upscale(job.task)
        made = (
            self._sampled(job, model, resolved, on_step, on_preview, turn)
            if pixel_upscale is None
            else self._pixel_upscaled(job, pixel_upscale)
        )
        return [
            _rendered(job, image, seed, subseed, model, resolved, index)
            for index, (image, seed, subseed) in enumerate(made)
        ]

    def _sampled(
        self,
        job: GenerationJob,
        model: StoredModel,
        resolved: _Resolved,
        on_step: StepCallback,
        on_preview: PreviewCallback | None,
        turn: JobTurn | None,
    ) -> Iterator[tuple[Image.Image, int, int]]:
        """Each image with its seed and variation seed, batch by batch, on the checkpoint."""
        settings = job.settings
        base = self.cache.pipeline(model)
        loras = self._lora_plan(model, resolved)
        loras.activate()
        pipe = self._with_vae(base, resolved.vae)
        seamless = self._seamless_setter(pipe, settings.tiling)
        seamless()
        counter = _StepCounter(job.total_steps, on_step)
        whole_job = self._sampling(pipe, job, counter, on_preview)
        if turn is not None:
            turn.loras, turn.seamless = loras, settings.tiling
            turn.on_resume = seamless
            whole_job = replace(whole_job, run_unet=turn.run_unet)
        for batch in range(1 if isinstance(job.task, Upscale) else settings.n_iter):
            sampling = _batch(whole_job, job, batch)
            yield from zip(
                self._run_mode(pipe, job, sampling, loras),
                sampling.seeds,
                sampling.subseeds or sampling.seeds,
                strict=False,
            )

    def _pixel_upscaled(
        self, job: GenerationJob, options: UpscaleOptions
    ) -> list[tuple[Image.Image, int, int]]:
        """The one image of a pixel upscale, with the seeds its infotext names."""
        if job.source is None:
            raise InvalidArgument("mode", "the images of this mode are missing")
        image = self.pixel_upscaler(options.upscaler, "upscale.upscaler")(job.source, options.scale)
        seed = job.seeds()[0]
        return [(image, seed, job.subseeds()[0] if job.settings.subseed_strength else seed)]

    def _resolve(self, job: GenerationJob) -> _Resolved:
        loras = []
        for use in job.loras:
            try:
                lora = self.registry.find(common_pb2.MODEL_KIND_LORA, use.name)
            except NotFound:
                raise InvalidArgument("params.loras", f"unknown LoRA {use.name!r}") from None
            loras.append((lora, use.weight, use.te_weight))
        vae, name = None, job.settings.vae
        if name and name not in ("Automatic", "None"):
            try:
                vae = self.registry.find(common_pb2.MODEL_KIND_VAE, name)
            except NotFound:
                raise InvalidArgument("params.vae", f"unknown VAE {name!r}") from None
        return _Resolved(loras, vae)

    def _lora_plan(self, model: StoredModel, resolved: _Resolved) -> LoraPlan:
        """The job's LoRAs on the checkpoint's pipeline; activating it makes exactly them
        active (none: the base model, exactly)."""
        requests = tuple(
            LoraRequest(lora.sha256, self.cache.local_file(lora), unet, te)
            for lora, unet, te in resolved.loras
        )
        return LoraPlan(self.cache.adapters(model), requests)

    def _with_vae(
        self, pipe: StableDiffusionPipeline, vae_model: StoredModel | None
    ) -> StableDiffusionPipeline:
        if vae_model is None:
            return pipe
        with self._lock:
            vae = self._vaes.get(vae_model.sha256)
            if vae is None:
                vae = load_vae(self.cache.local_file(vae_model), like=pipe.vae)
                bound_memory(vae, self.cache.vae_tile_size)
                self._vaes[vae_model.sha256] = vae
                while len(self._vaes) > 2:
                    self._vaes.popitem(last=False)
            self._vaes.move_to_end(vae_model.sha256)
        return StableDiffusionPipeline(
            **{**pipe.components, "vae": vae}, requires_safety_checker=False
        )

    def _seamless_setter(self, pipe: StableDiffusionPipeline, enabled: bool) -> Callable[[], None]:
        """Puts the job's padding on the shared U-Net and VAE: circular for A1111 "Tiling",
        else plain. A seamless picture decodes whole: VAE tiles would each wrap on themselves."""
        vae_tiles = self.cache.vae_tile_size > 0

        def put() -> None:
            set_seamless(pipe.unet, enabled)
            set_seamless(pipe.vae, enabled)
            pipe.vae.use_tiling = vae_tiles and not enabled

        return put

    def _preview_maker(
        self, pipe: StableDiffusionPipeline, job: GenerationJob
    ) -> Callable[[torch.Tensor], Image.Image]:
        """Latents → the preview picture, by the job's preview method."""
        method = job.request.preview.method if job.request.preview else PREVIEW_METHODS[0]
        if method == "Full":
            return lambda latents: modes.full_preview(pipe, latents)
        if method == "TAESD":
            decoder = self._taesd_decoder()
            return lambda latents: taesd_preview(decoder, latents)
        return modes.cheap_preview

    def _taesd_decoder(self) -> DecoderTiny:
        """The store's TAESD decoder (the first by name), loaded once."""
        found = self.registry.list([common_pb2.MODEL_KIND_VAE_APPROX])
        if not found:
            raise InvalidArgument(
                "preview.method",
                "TAESD needs a TAESD decoder in the store: import one of kind VAE_APPROX",
            )
        model = found[0]
        with self._lock:
            if self._taesd is None or self._taesd[0] != model.sha256:
                path, cache = self.cache.local_file(model), self.cache
                self._taesd = (model.sha256, load_decoder(path, cache.device, cache.dtype))
            return self._taesd[1]

    def _sampling(
        self,
        pipe: StableDiffusionPipeline,
        job: GenerationJob,
        counter: _StepCounter,
        on_preview: PreviewCallback | None,
    ) -> modes.Sampling:
        """The job's sampling settings, prompts encoded once for all its batches."""
        s = job.settings
        cond, uncond = PromptEncoder(pipe.tokenizer, pipe.text_encoder).encode_schedule(
            job.prompt, s.negative_prompt, s.steps, s.clip_skip
        )
        preview = job.request.preview
        return modes.Sampling(
            prompt_embeds=cond,
            negative_embeds=uncond,
            scheduler_factory=_scheduler_factory(pipe, s.sampler, s.schedule_type),
            steps=s.steps,
            cfg_scale=s.cfg_scale,
            seeds=job.seeds(),
            subseeds=job.subseeds() if s.subseed_strength else [],
            subseed_strength=s.subseed_strength,
            on_step=counter.step,
            on_latents=(
                _preview_hook(preview, self._preview_maker(pipe, job), on_preview)
                if preview is not None and on_preview is not None
                else None
            ),
            settings=s,
        )

    def _run_mode(
        self, pipe: StableDiffusionPipeline, job: GenerationJob, s: modes.Sampling, loras: LoraPlan
    ) -> list[Image.Image]:
        """The images of one batch: the one switch on the job's task."""
        task, width, height = job.task, job.width, job.height
        if isinstance(task, Txt2Img) and task.hires is None:
            return modes.txt2img(pipe, s, width, height)
        if isinstance(task, Txt2Img) and task.hires is not None:
            return self._hires(pipe, job, task.hires, s, loras)
        if isinstance(task, Img2Img) and job.source is not None:
            o = task.img2img
            return modes.img2img(
                pipe,
                s,
                job.source,
                strength=o.denoising_strength,
                width=width,
                height=height,
                resize_mode=o.resize_mode,
                initial_noise_multiplier=o.initial_noise_multiplier,
            )
        if isinstance(task, Inpaint) and job.source is not None and job.mask is not None:
            o = task.inpaint
            return modes.inpaint(
                pipe,
                s,
                job.source,
                job.mask,
                strength=task.img2img.denoising_strength,
                mask_blur=o.blur,
                fill=o.fill,
                only_masked=o.only_masked,
                padding=o.only_masked_padding,
                invert=o.invert_mask,
                width=width,
                height=height,
                resize_mode=task.img2img.resize_mode,
                initial_noise_multiplier=task.img2img.initial_noise_multiplier,
            )
        if isinstance(task, Variation) and job.source is not None:
            return modes.variation(pipe, s, job.source, strength=task.variation.strength)
        if isinstance(task, Upscale) and job.source is not None:
            return [self._upscale(pipe, task.upscale, job.source, s)]
        raise InvalidArgument("mode", "the images of this mode are missing")

    def _hires(
        self,
        pipe: StableDiffusionPipeline,
        job: GenerationJob,
        hires: HiresOptions,
        first: modes.Sampling,
        loras: LoraPlan,
    ) -> list[Image.Image]:
        p = job.settings
        second = replace(
            first,
            steps=hires.second_pass_steps or p.steps,
            scheduler_factory=_scheduler_factory(pipe, hires.sampler or p.sampler, p.schedule_type),
        )
        prompt = hires.prompt or job.prompt
        negative = hires.negative_prompt or p.negative_prompt
        prompts_differ = (prompt, negative) != (job.prompt, p.negative_prompt)
        if prompts_differ or (second.steps != first.steps and _is_edited(first)):
            loras.activate()  # other jobs' passes may have switched the text encoder's LoRAs
            cond, uncond = PromptEncoder(pipe.tokenizer, pipe.text_encoder).encode_schedule(
                prompt, negative, second.steps, p.clip_skip
            )
            second = replace(second, prompt_embeds=cond, negative_embeds=uncond)
        upscaler: str | modes.PixelUpscaler = hires.upscaler
        if hires.upscaler not in modes.LATENT_UPSCALERS:
            pixels = self.pixel_upscaler(hires.upscaler, "hires.upscaler")
            upscaler = lambda image, w, h: resize_to(pixels(image, w / image.width), w, h)  # noqa: E731
        return modes.hires_fix(
            pipe,
            first,
            second,
            width=job.width,
            height=job.height,
            scale=hires.scale,
            resize_x=hires.resize_x,
            resize_y=hires.resize_y,
            upscaler=upscaler,
            denoising_strength=hires.denoising_strength,
        )

    def _upscale(
        self,
        pipe: StableDiffusionPipeline,
        options: UpscaleOptions,
        image: Image.Image,
        s: modes.Sampling,
    ) -> Image.Image:
        """SD upscale: the pixel upscaler, then tiled refine (a pixel upscale alone never
        gets here: it needs no pipeline, see `render`)."""
        return modes.upscale_then_refine(
            pipe,
            s,
            image,
            scale=options.scale,
            upscaler=self.pixel_upscaler(options.upscaler, "upscale.upscaler"),
            tile=options.tile_size,
            overlap=options.tile_overlap,
            strength=options.denoising_strength,
        )

    def pixel_upscaler(self, name: str, field: str) -> ScaleUpscaler:
        """A built-in pixel upscaler, or an ESRGAN-family model from the store."""
        if name in PIXEL_UPSCALERS:
            return PIXEL_UPSCALERS[name]
        if name in modes.LATENT_UPSCALERS:
            raise InvalidArgument(field, f"{name!r} upscales latents: it serves hi-res fix only")
        try:
            stored = self.registry.find(common_pb2.MODEL_KIND_UPSCALER, name)
        except NotFound:
            raise InvalidArgument(field, f"unknown upscaler {name!r}; see ListUpscalers") from None
        model = self._upscaler(stored)

        def run(image: Image.Image, scale: float) -> Image.Image:
            out = model.upscale(image)
            target = (round(image.width * scale), round(image.height * scale))
            return out if out.size == target else resize_to(out, *target)

        return run

    def _upscaler(self, stored: StoredModel) -> Upscaler:
        with self._lock:
            model = self._upscalers.get(stored.sha256)
            if model is None:
                model = load_upscaler(self.cache.local_file(stored))
                model.model.to(self.cache.device)
                self._upscalers[stored.sha256] = model
                while len(self._upscalers) > 2:
                    self._upscalers.popitem(last=False)
            return model


def _batch(whole_job: modes.Sampling, job: GenerationJob, batch: int) -> modes.Sampling:
    """The seeds of batch `batch` (an upscale makes one image)."""
    size = 1 if isinstance(job.task, Upscale) else job.settings.batch_size
    window = slice(batch * size, (batch + 1) * size)
    subseeds = list(whole_job.subseeds)[window] if whole_job.subseeds else []
    return replace(whole_job, seeds=list(whole_job.seeds)[window], subseeds=subseeds)


def _pixel_upscale(task: object) -> UpscaleOptions | None:
    """The options of a pixel upscale (an upscale without tiled refine), the one task that
    samples nothing; None for the others."""
    if isinstance(task, Upscale) and not task.upscale.tiled_refine:
        return task.upscale
    return None


def _rendered(
    job: GenerationJob,
    image: Image.Image,
    seed: int,
    subseed: int,
    model: StoredModel,
    resolved: _Resolved,
    index: int,
) -> RenderedImage:
    """The PNG of one image, its A1111 infotext inside."""
    text = infotext_for(job, seed, subseed, model, resolved)
    return RenderedImage(
        png=png_with_infotext(image, text),
        seed=seed,
        subseed=subseed,
        subseed_strength=job.settings.subseed_strength,
        width=image.width,
        height=image.height,
        infotext=text,
        index=index,
        vae=resolved.vae,
        loras=tuple(resolved.loras),
    )


class _StepCounter:
    """Counts steps over every pass and batch of a job, for one progress bar."""

    def __init__(self, total: int, report: StepCallback) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.report = report

    def step(self, _step: int, _pass_total: int) -> None:
        self.done += 1
        self.total = max(self.total, self.done)
        self.report(self.done, self.total)


def _scheduler_factory(pipe: StableDiffusionPipeline, sampler: str, schedule_type: str):
    config = dict(pipe.scheduler.config)
    chosen = resolve_sampler(sampler)
    return lambda: make_scheduler(chosen, config, schedule_type)


def _preview_hook(
    preview: Preview,
    make_preview: Callable[[torch.Tensor], Image.Image],
    on_preview: PreviewCallback,
) -> Callable[[torch.Tensor], None]:
    """Makes every Nth step's preview; runs in the job's turn, so the VAE is its to use."""
    calls = 0

    def hook(latents: torch.Tensor) -> None:
        nonlocal calls
        calls += 1
        if calls % preview.every_n_steps == 0:
            image = make_preview(latents)
            image.thumbnail((preview.max_size, preview.max_size))
            on_preview(image)

    return hook


def infotext_for(
    job: GenerationJob, seed: int, subseed: int, model: StoredModel, resolved: _Resolved
) -> str:
    """A1111's `parameters` text for one image of the job."""
    p, task = job.settings, job.task
    hires = task.hires if isinstance(task, Txt2Img) else None
    upscale = isinstance(task, Upscale)
    values: dict[str, object] = {
        "Steps": p.steps,
        "Sampler": p.sampler,
        "CFG scale": p.cfg_scale,
        "Seed": seed,
        "Size": None if upscale else f"{p.width}x{p.height}",
        "Model hash": model.short_hash,
        "Model": model.name,
        "VAE hash": resolved.vae.short_hash if resolved.vae else None,
        "VAE": resolved.vae.name if resolved.vae else None,
        "Variation seed": subseed if p.subseed_strength else None,
        "Variation seed strength": p.subseed_strength or None,
        "Denoising strength": denoising_strength(task),
        **labelled_values(p),
        "RNG": "CPU",
        "Mask blur": _mask_blur_label(task),
        "Hires upscale": hires.scale if hires else None,
        "Hires steps": (hires.second_pass_steps or None) if hires else None,
        "Hires upscaler": hires.upscaler if hires else None,
        "Lora hashes": format_lora_hashes({m.name: m.short_hash for m, _, _ in resolved.loras})
        or None,
        "Version": VERSION,
    }
    return format_infotext(p.prompt, p.negative_prompt, values)


def _mask_blur_label(task: object) -> int | None:
    """A1111 writes one `Mask blur` when both axes agree, none otherwise."""
    if not isinstance(task, Inpaint) or task.inpaint.blur[0] != task.inpaint.blur[1]:
        return None
    return task.inpaint.blur[0]


def _is_edited(s: modes.Sampling) -> bool:
    """Whether the prompts change during sampling (A1111 prompt editing)."""
    schedules = [s.negative_embeds]
    if isinstance(s.prompt_embeds, ComposedPrompt):
        schedules.extend(part for _, part in s.prompt_embeds.parts)
    return any(isinstance(e, EmbedSchedule) and len(e.ends) > 1 for e in schedules)
