"""The LoRA training loop: peft adapters on the U-Net (and optionally the text encoder) of a
loaded SD 1.x pipeline, trained on a dataset's pictures and captions.

It reads as a recipe: fit pictures → cache latents and text embeddings → add adapters →
optimizer and LR schedule → resume from the latest saved state → steps (noise, noise
offset, min-SNR weighting) with progress, samples and saves → kohya tensors. It knows
nothing of the store, SQL or gRPC: `TrainingHooks` connect it to the worker, and tests and
the benchmark drive it directly.

Resuming is exact in what matters: batches come from a per-epoch shuffle seeded by
`seed + epoch`, and the noise generator, optimizer and schedule are restored, so a resumed
run takes the same remaining steps as one that never stopped.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from services.common.errors import FailedPrecondition
from services.trainer import fitting, state
from services.trainer.config import MixedPrecision, Optimizer, TrainingConfig
from services.trainer.lora_format import (
    TEXT_TARGETS,
    UNET_TARGETS,
    adapter_state,
    kohya_state_dict,
    load_adapter_state,
)

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

log = logging.getLogger(__name__)

MAX_GRAD_NORM = 1.0
SAMPLE_STEPS = 20
SAMPLE_CFG = 7.0
ENCODE_BATCH = 8
VALIDATION_TIMESTEPS = (50, 200, 400, 600, 800, 950)


class Stopped(Exception):
    """Training stopped on request (cancel, or the service that started it is gone)."""


@dataclass(frozen=True)
class TrainingImage:
    picture: Image.Image
    caption: str
    repeats: int


@dataclass
class TrainingHooks:
    """How the loop reports; every hook is optional."""

    on_progress: Callable[[int, int, float, float, float], None] | None = (
        None  # step, epoch, loss, lr, eta
    )
    on_sample: Callable[[int, str, bytes], None] | None = None  # step, prompt, png
    on_epoch_lora: Callable[[int, int, dict[str, torch.Tensor]], None] | None = None  # epoch, step
    on_start: Callable[[int], None] | None = None  # the step it starts (or resumes) from
    should_stop: Callable[[], bool] | None = None


@dataclass
class TrainingResult:
    tensors: dict[str, torch.Tensor]
    steps: int
    epochs: int
    resumed_from: int
    mixed_precision: str
    losses: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Precision:
    """Device-dependent choices: mixed precision and where the frozen weights live."""

    device: torch.device
    weight_dtype: torch.dtype
    autocast: torch.dtype | None
    name: str


def choose_precision(mode: MixedPrecision, device: torch.device) -> Precision:
    """bf16 wherever it is asked for (CPUs autocast to bf16 too, and AMX runs it fast); fp16
    by default on a GPU; otherwise float32 throughout (fp16 autocast is a GPU feature)."""
    if mode == MixedPrecision.BF16:
        return Precision(device, torch.bfloat16, torch.bfloat16, "bf16")
    if device.type != "cuda" or mode == MixedPrecision.NO:
        return Precision(device, torch.float32, None, "no")
    return Precision(device, torch.float16, torch.float16, "fp16")


# --- data --------------------------------------------------------------------------------------


def to_tensor(picture: Image.Image) -> torch.Tensor:
    pixels = np.asarray(picture.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def fit_pictures(images: Sequence[TrainingImage], config: TrainingConfig) -> list[Image.Image]:
    if config.bucketing:
        buckets = fitting.buckets_for(config.resolution, minimum=min(256, config.resolution))
        return [fitting.fit_bucket(image.picture, buckets) for image in images]
    size = (config.resolution, config.resolution)
    return [fitting.fit_center(image.picture, size) for image in images]


def epoch_batches(
    sizes: Sequence[tuple[int, int]], repeats: Sequence[int], batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    """The batches (image indexes) of one epoch: each image `repeats` times, shuffled with a
    generator seeded by `seed + epoch`, batched within its size bucket."""
    generator = torch.Generator().manual_seed(seed + epoch)
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, count in enumerate(repeats):
        by_size.setdefault(sizes[index], []).extend([index] * count)
    batches: list[list[int]] = []
    for size in sorted(by_size):
        entries = by_size[size]
        order = torch.randperm(len(entries), generator=generator).tolist()
        shuffled = [entries[i] for i in order]
        batches += [shuffled[i : i + batch_size] for i in range(0, len(shuffled), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def encode_text(
    pipe: StableDiffusionPipeline, captions: Sequence[str], clip_skip: int
) -> torch.Tensor:
    """CLIP hidden states as SD conditions on them; clip skip N takes the N-th layer from
    the end, then the final layer norm (A1111's meaning)."""
    ids = pipe.tokenizer(
        list(captions),
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(pipe.text_encoder.device)
    if clip_skip <= 1:
        return pipe.text_encoder(ids)[0]
    output = pipe.text_encoder(ids, output_hidden_states=True)
    hidden = output.hidden_states[-clip_skip]
    return pipe.text_encoder.text_model.final_layer_norm(hidden)


@torch.no_grad()
def encode_latent_dist(
    pipe: StableDiffusionPipeline, pixels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of the VAE's latent distribution, scaled; caching both
    (rather than one sample) keeps the per-step sampling that uncached training does."""
    vae = pipe.vae
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    scale = vae.config.scaling_factor
    return dist.mean * scale, dist.std * scale


# --- optimizer ---------------------------------------------------------------------------------


def make_optimizer(
    kind: Optimizer, groups: list[dict[str, Any]], device: torch.device
) -> torch.optim.Optimizer:
    if kind == Optimizer.ADAMW_8BIT:
        try:
            import bitsandbytes as bnb  # type: ignore[import-not-found]
        except ImportError:
            bnb = None
        if bnb is None or device.type != "cuda":
            missing = "bitsandbytes is not installed" if bnb is None else "there is no CUDA GPU"
            raise FailedPrecondition(
                f"config.optimizer: AdamW 8-bit needs bitsandbytes and a CUDA GPU, and {missing} "
                "here; choose ADAMW, LION or PRODIGY"
            )
        return bnb.optim.AdamW8bit(groups, weight_decay=1e-2)
    if kind == Optimizer.LION:
        from lion_pytorch import Lion

        return Lion(groups, weight_decay=1e-2)
    if kind == Optimizer.PRODIGY:
        from prodigyopt import Prodigy

        return Prodigy(groups, weight_decay=1e-2, use_bias_correction=True, safeguard_warmup=True)
    return torch.optim.AdamW(groups, weight_decay=1e-2)


def optimizer_available(kind: Optimizer, device: torch.device) -> str | None:
    """Why `kind` cannot run on `device`, or None."""
    try:
        make_optimizer(kind, [{"params": [nn.Parameter(torch.zeros(1))], "lr": 1e-4}], device)
    except FailedPrecondition as error:
        return error.message
    return None


# --- loss --------------------------------------------------------------------------------------


def snr_weights(
    scheduler: Any, timesteps: torch.Tensor, gamma: float, v_prediction: bool
) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023): min(SNR, γ) / SNR, or / (SNR + 1) for
    v-prediction."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if v_prediction else clipped / snr


def denoising_loss(
    unet: nn.Module,
    scheduler: Any,
    latents: torch.Tensor,
    encoder_states: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    min_snr_gamma: float = 0.0,
) -> torch.Tensor:
    """The training objective: predict the noise (or velocity) added at `timesteps`."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    v_prediction = scheduler.config.prediction_type == "v_prediction"
    target = scheduler.get_velocity(latents, noise, timesteps) if v_prediction else noise
    predicted = unet(noisy, timesteps, encoder_states).sample
    per_sample = ((predicted.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    if min_snr_gamma > 0:
        per_sample = per_sample * snr_weights(scheduler, timesteps, min_snr_gamma, v_prediction)
    return per_sample.mean()


@torch.no_grad()
def validation_loss(
    unet: nn.Module,
    scheduler: Any,
    latents: torch.Tensor,
    encoder_states: torch.Tensor,
    seed: int = 1234,
) -> float:
    """Denoising loss averaged over fixed timesteps with fixed noise: comparable between a
    base model and the same model with a LoRA."""
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for t in VALIDATION_TIMESTEPS:
        noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
        steps = torch.full((latents.shape[0],), t, dtype=torch.long, device=latents.device)
        total += float(denoising_loss(unet, scheduler, latents, encoder_states, noise, steps))
    return total / len(VALIDATION_TIMESTEPS)


# --- the trainer -------------------------------------------------------------------------------


class LoraTrainer:
    """One training run over a loaded pipeline. The pipeline is changed in place (adapters
    are added); give it a pipeline of its own."""

    def __init__(
        self,
        pipe: StableDiffusionPipeline,
        images: Sequence[TrainingImage],
        config: TrainingConfig,
        *,
        total_steps: int,
        state_dir: Path,
        device: torch.device,
        hooks: TrainingHooks | None = None,
    ) -> None:
        from diffusers import DDPMScheduler

        if not images:
            raise ValueError("no images to train on")
        self.pipe = pipe
        self.config = config
        self.total_steps = total_steps
        self.state_dir = state_dir
        self.hooks = hooks or TrainingHooks()
        self.precision = choose_precision(config.mixed_precision, device)
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.captions = [image.caption for image in images]
        self.repeats = [config.repeats or image.repeats for image in images]
        self.pictures = fit_pictures(images, config)
        self.sizes = [p.size for p in self.pictures]
        self.noise = torch.Generator().manual_seed(config.seed)
        self._latent_cache: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self._text_cache: torch.Tensor | None = None
        self._epochs: dict[int, list[list[int]]] = {}
        self.losses: list[float] = []

    # -- set-up ---------------------------------------------------------------------------

    def steps_per_epoch(self) -> int:
        return len(self._batches(0))

    def _batches(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epochs:
            self._epochs = {
                epoch: epoch_batches(
                    self.sizes, self.repeats, self.config.batch_size, self.config.seed, epoch
                )
            }
        return self._epochs[epoch]

    def _prepare_models(self) -> list[dict[str, Any]]:
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        pipe, config, precision = self.pipe, self.config, self.precision
        pipe.to(precision.device, precision.weight_dtype)
        for model in (pipe.unet, pipe.vae, pipe.text_encoder):
            model.requires_grad_(False)
        torch.manual_seed(config.seed)
        lora = {"r": config.network_dim, "lora_alpha": config.network_alpha}
        pipe.unet.add_adapter(LoraConfig(**lora, target_modules=list(UNET_TARGETS)))
        models = [pipe.unet]
        if config.train_text_encoder:
            pipe.text_encoder.add_adapter(LoraConfig(**lora, target_modules=list(TEXT_TARGETS)))
            models.append(pipe.text_encoder)
        cast_training_params(models, dtype=torch.float32)
        if config.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
            if config.train_text_encoder:
                pipe.text_encoder.gradient_checkpointing_enable()
        groups = [{"params": self._trainable(pipe.unet), "lr": config.unet_lr}]
        if config.train_text_encoder:
            groups.append(
                {"params": self._trainable(pipe.text_encoder), "lr": config.text_encoder_lr}
            )
        return groups

    @staticmethod
    def _trainable(model: nn.Module) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def _cache(self) -> None:
        """Latents (their distribution) and text embeddings computed once, when asked."""
        if self.config.cache_latents:
            means, stds = [], []
            for picture in self.pictures:  # one at a time: sizes differ between buckets
                mean, std = encode_latent_dist(self.pipe, to_tensor(picture)[None])
                means.append(mean[0].float().cpu())
                stds.append(std[0].float().cpu())
            self._latent_cache = (means, stds)
        if self.config.cache_text_embeddings and not self.config.train_text_encoder:
            with torch.no_grad():
                chunks = [
                    encode_text(
                        self.pipe, self.captions[i : i + ENCODE_BATCH], self.config.clip_skip
                    )
                    for i in range(0, len(self.captions), ENCODE_BATCH)
                ]
            self._text_cache = torch.cat(chunks).float()

    # -- one step -------------------------------------------------------------------------

    def _latents(self, batch: list[int]) -> torch.Tensor:
        device = self.precision.device
        if self._latent_cache is not None:
            means = torch.stack([self._latent_cache[0][i] for i in batch])
            stds = torch.stack([self._latent_cache[1][i] for i in batch])
            eps = torch.randn(means.shape, generator=self.noise)
            return (means + stds * eps).to(device)
        pixels = torch.stack([to_tensor(self.pictures[i]) for i in batch])
        mean, std = encode_latent_dist(self.pipe, pixels)
        eps = torch.randn(mean.shape, generator=self.noise).to(device)
        return (mean.float() + std.float() * eps).to(device)

    def _conditions(self, batch: list[int]) -> torch.Tensor:
        if self._text_cache is not None:
            return self._text_cache[batch].to(self.precision.device)
        captions = [self.captions[i] for i in batch]
        grad = torch.enable_grad() if self.config.train_text_encoder else torch.no_grad()
        with grad:
            return encode_text(self.pipe, captions, self.config.clip_skip)

    def _step_loss(self, batch: list[int]) -> torch.Tensor:
        latents = self._latents(batch)
        conditions = self._conditions(batch)
        noise = torch.randn(latents.shape, generator=self.noise)
        if self.config.noise_offset:
            offset = torch.randn((*latents.shape[:2], 1, 1), generator=self.noise)
            noise = noise + self.config.noise_offset * offset
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (latents.shape[0],), generator=self.noise)
        device = self.precision.device
        autocast = (
            torch.autocast(device.type, dtype=self.precision.autocast)
            if self.precision.autocast is not None
            else nullcontext()
        )
        with autocast:
            return denoising_loss(
                self.pipe.unet,
                self.noise_scheduler,
                latents.to(self.precision.weight_dtype),
                conditions.to(self.precision.weight_dtype),
                noise.to(device, self.precision.weight_dtype),
                timesteps.to(device),
                self.config.min_snr_gamma,
            )

    # -- saving ---------------------------------------------------------------------------

    def _models(self) -> dict[str, nn.Module]:
        models = {"unet": self.pipe.unet}
        if self.config.train_text_encoder:
            models["text_encoder"] = self.pipe.text_encoder
        return models

    def _save_state(self, step: int, optimizer: Any, schedule: Any, scaler: Any) -> None:
        payload = {name: adapter_state(model) for name, model in self._models().items()}
        payload |= {
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "noise_rng": self.noise.get_state(),
            "torch_rng": torch.get_rng_state(),
            "scaler": scaler.state_dict() if scaler is not None else {},
        }
        state.save_state(self.state_dir, step, payload)

    def _resume(self, optimizer: Any, schedule: Any, scaler: Any) -> int:
        payload = state.load_latest(self.state_dir)
        if payload is None:
            return 0
        for name, model in self._models().items():
            load_adapter_state(model, payload[name])
        optimizer.load_state_dict(payload["optimizer"])
        schedule.load_state_dict(payload["scheduler"])
        self.noise.set_state(payload["noise_rng"])
        torch.set_rng_state(payload["torch_rng"])
        if scaler is not None and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        log.info("resuming from saved state at step %d", payload["step"])
        return int(payload["step"])

    def lora_tensors(self) -> dict[str, torch.Tensor]:
        text = self.pipe.text_encoder if self.config.train_text_encoder else None
        return kohya_state_dict(self.pipe.unet, text, self.config.network_alpha, torch.float16)

    # -- samples --------------------------------------------------------------------------

    def sample_prompts(self) -> list[str]:
        return list(self.config.sample_prompts) or [self.captions[0]]

    @torch.no_grad()
    def _sample(self, step: int) -> None:
        if self.hooks.on_sample is None:
            return
        self.pipe.unet.eval()
        size = self.sizes[0]
        clip_skip = self.config.clip_skip - 1 or None
        for prompt in self.sample_prompts():
            generator = torch.Generator().manual_seed(self.config.seed)
            picture = self.pipe(
                prompt,
                width=size[0],
                height=size[1],
                num_inference_steps=SAMPLE_STEPS,
                guidance_scale=SAMPLE_CFG,
                generator=generator,
                clip_skip=clip_skip,
            ).images[0]
            out = io.BytesIO()
            picture.save(out, format="PNG")
            self.hooks.on_sample(step, prompt, out.getvalue())
        self.pipe.unet.train()

    # -- the run --------------------------------------------------------------------------

    def train(self) -> TrainingResult:
        from diffusers.optimization import get_scheduler

        config, hooks = self.config, self.hooks
        if self.precision.device.type == "cpu":
            # Subnormal floats appear in some activations and make CPU kernels up to ~40×
            # slower (measured on the tiny model); flushing them changes nothing visible.
            torch.set_flush_denormal(True)
        groups = self._prepare_models()
        self._cache()
        optimizer = make_optimizer(config.optimizer, groups, self.precision.device)
        schedule = get_scheduler(
            config.lr_scheduler,
            optimizer,
            num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=self.total_steps,
        )
        scaler = torch.amp.GradScaler("cuda") if self.precision.autocast == torch.float16 else None
        start = self._resume(optimizer, schedule, scaler)
        if hooks.on_start is not None:
            hooks.on_start(start)
        per_epoch = self.steps_per_epoch()
        params = [p for group in groups for p in group["params"]]
        self.pipe.unet.train()
        started = time.perf_counter()
        for step in range(start, self.total_steps):
            if hooks.should_stop is not None and hooks.should_stop():
                raise Stopped()
            epoch, index = divmod(step, per_epoch)
            loss = self._step_loss(self._batches(epoch)[index])
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
                optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            self.losses.append(float(loss.detach()))
            self._after_step(
                step + 1, per_epoch, optimizer, schedule, scaler, started, step + 1 - start
            )
        epochs = math.ceil(self.total_steps / per_epoch)
        return TrainingResult(
            self.lora_tensors(), self.total_steps, epochs, start, self.precision.name, self.losses
        )

    def _after_step(
        self,
        done: int,
        per_epoch: int,
        optimizer: Any,
        schedule: Any,
        scaler: Any,
        started: float,
        done_here: int,
    ) -> None:
        config, hooks = self.config, self.hooks
        epoch = math.ceil(done / per_epoch)
        if hooks.on_progress is not None:
            rate = (time.perf_counter() - started) / done_here
            lr = float(schedule.get_last_lr()[0])
            hooks.on_progress(done, epoch, self.losses[-1], lr, rate * (self.total_steps - done))
        if config.sample_every_n_steps and done % config.sample_every_n_steps == 0:
            self._sample(done)
        epoch_end = done % per_epoch == 0
        last = done == self.total_steps
        if (
            epoch_end
            or (config.save_state_every_n_steps and done % config.save_state_every_n_steps == 0)
        ) and not last:
            self._save_state(done, optimizer, schedule, scaler)
        every = config.save_every_n_epochs
        if epoch_end and every and epoch % every == 0 and not last and hooks.on_epoch_lora:
            hooks.on_epoch_lora(epoch, done, self.lora_tensors())
