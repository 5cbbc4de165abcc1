"""What a denoising run is given: the `Sampling` of a batch, where it `Start`s, and its noise.

Noise is drawn on the CPU per image seed, so a seed gives the same picture on any device and
in any batch; samplers that draw noise every step get generators continuing each seed's
stream, as A1111's `ImageRNG` does."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from services.common.errors import InvalidArgument
from services.common.generation import Settings
from services.generator.deep_cache import check_interval
from services.generator.modes.checks import check_subseeds, check_unit
from services.generator.prompts import ComposedPrompt, EmbedSchedule
from services.generator.step_batching import UnetRunner, run_unet_alone


def _no_progress(step: int, total: int) -> None:
    """Default `Sampling.on_step`: progress is not reported."""


@dataclass(frozen=True)
class Sampling:
    """One batch's sampling: conditioning, sampler, steps, guidance and one seed per image.

    `on_step(step, total)` is called after every step (step from 1) and may raise to cancel.
    `on_latents` gets the batch's latents after every step, before `on_step`: the sampler's
    denoised estimate when it gives one (what A1111 previews), else the current latents.
    `run_unet` runs each U-Net pass: at once by default, or shared with other jobs' passes
    (`step_batching`). `settings` are the job's: a stage reads the knobs that are the same for
    every pass and batch from them (eta, DeepCache, ENSD), so a new one needs no field here;
    what a pass or batch changes (steps, seeds, conditioning, sampler) is a field of its own.
    """

    prompt_embeds: torch.Tensor | EmbedSchedule | ComposedPrompt
    negative_embeds: torch.Tensor | EmbedSchedule
    scheduler_factory: Callable[[], SchedulerMixin]
    steps: int
    cfg_scale: float
    seeds: Sequence[int]
    subseeds: Sequence[int] = ()
    subseed_strength: float = 0.0
    on_step: Callable[[int, int], None] = _no_progress
    on_latents: Callable[[torch.Tensor], None] | None = None
    run_unet: UnetRunner = run_unet_alone
    settings: Settings = field(default_factory=Settings)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise InvalidArgument("params.seed", "at least one seed is needed")
        if self.steps < 1:
            raise InvalidArgument("params.steps", "must be at least 1")
        check_interval(self.settings.deep_cache_interval)
        check_unit("params.subseed_strength", self.subseed_strength)
        check_subseeds(self.seeds, self.subseeds)

    @property
    def batch_size(self) -> int:
        return len(self.seeds)


@dataclass(frozen=True)
class Start:
    """Where a denoising run starts. No `latents`: txt2img, from pure noise."""

    latents: torch.Tensor | None = None
    strength: float = 1.0
    """The part of the schedule that runs (img2img's denoising strength)."""
    exact_steps: bool = False
    """Run exactly `Sampling.steps` steps by stretching the schedule (hi-res fix's pass)."""
    noise_multiplier: float = 1.0
    """Scales the noise added to `latents` (A1111's initial noise multiplier)."""
    keep: torch.Tensor | None = None
    """4-channel inpainting: 1 where the init latents are kept, blended back every step."""
    unet_extra: torch.Tensor | None = None
    """9-channel inpainting: mask and masked-image latents appended to the U-Net input."""

    def to(self, device: torch.device, dtype: torch.dtype) -> Start:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return replace(
            self, latents=move(self.latents), keep=move(self.keep), unet_extra=move(self.unet_extra)
        )


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
    check_subseeds(seeds, subseeds)
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


def step_generators(
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
