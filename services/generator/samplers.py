"""A1111 sampler names mapped to diffusers schedulers (REFERENCE.md, "Samplers").

A scheduler is made per job with `Cls.from_config(base_config, **options)`, so the
checkpoint's own scheduler config (betas, timesteps) is kept and only the algorithm
changes. Only names in this allow-list are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from services.common.errors import InvalidArgument

DEFAULT_SAMPLER = "Euler a"


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler: type[SchedulerMixin]
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


_BASE: list[Sampler] = [
    Sampler("Euler a", EulerAncestralDiscreteScheduler, aliases=("euler_a", "k_euler_a")),
    Sampler("Euler", EulerDiscreteScheduler, aliases=("euler", "k_euler")),
    Sampler("LMS", LMSDiscreteScheduler, aliases=("lms", "k_lms")),
    Sampler("Heun", HeunDiscreteScheduler, aliases=("heun", "k_heun")),
    Sampler("DPM2", KDPM2DiscreteScheduler, aliases=("dpm2", "k_dpm_2")),
    Sampler("DPM2 a", KDPM2AncestralDiscreteScheduler, aliases=("dpm2_a", "k_dpm_2_a")),
    Sampler("DPM++ 2M", DPMSolverMultistepScheduler, aliases=("dpmpp_2m",)),
    Sampler(
        "DPM++ 2M SDE",
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++"},
        aliases=("dpmpp_2m_sde",),
    ),
    Sampler("DPM++ SDE", DPMSolverSinglestepScheduler, aliases=("dpmpp_sde",)),
    Sampler("DDIM", DDIMScheduler, aliases=("ddim",)),
    Sampler("UniPC", UniPCMultistepScheduler, aliases=("unipc",)),
    Sampler("PLMS", PNDMScheduler, {"skip_prk_steps": True}, aliases=("plms",)),
]

_KARRAS_CAPABLE = {
    "LMS",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DPM++ 2M",
    "DPM++ 2M SDE",
    "DPM++ SDE",
    "Euler",
}

SCHEDULE_TYPES: dict[str, dict[str, Any]] = {
    "Automatic": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "Simple": {"timestep_spacing": "trailing"},
}


def _with_karras(sampler: Sampler) -> Sampler:
    return Sampler(
        f"{sampler.name} Karras",
        sampler.scheduler,
        {**sampler.options, "use_karras_sigmas": True},
    )


SAMPLERS: dict[str, Sampler] = {
    s.name: s for s in [*_BASE, *(_with_karras(s) for s in _BASE if s.name in _KARRAS_CAPABLE)]
}
_BY_ALIAS = {alias.lower(): s for s in SAMPLERS.values() for alias in (s.name, *s.aliases)}


def resolve_sampler(name: str, field_name: str = "params.sampler") -> Sampler:
    """The sampler for an A1111 name (case-insensitive, aliases accepted)."""
    sampler = _BY_ALIAS.get((name or DEFAULT_SAMPLER).strip().lower())
    if sampler is None:
        raise InvalidArgument(field_name, f"unknown sampler {name!r}; see ListSamplers")
    return sampler


def resolve_schedule_type(name: str) -> dict[str, Any]:
    options = SCHEDULE_TYPES.get(name or "Automatic")
    if options is None:
        allowed = ", ".join(SCHEDULE_TYPES)
        raise InvalidArgument("params.schedule_type", f"must be one of {allowed}")
    return options


def make_scheduler(
    sampler: Sampler, base_config: dict[str, Any], schedule_type: str = "Automatic"
) -> SchedulerMixin:
    """A fresh scheduler for one job, from the checkpoint's scheduler config."""
    options = {**sampler.options, **resolve_schedule_type(schedule_type)}
    return sampler.scheduler.from_config(base_config, **options)
