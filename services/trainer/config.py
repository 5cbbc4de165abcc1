"""A training configuration as the trainer means it: every default and every bound, here.

Two values, in the order a request meets them (vLLM's `SamplingParams` is the model: built
and checked once, then only read):

- `RequestedConfig` is what a client asked for; a field it left unset is None.
- `resolve_config` fills in the preset and the defaults and returns a `TrainingConfig`,
  every field concrete, after `TrainingConfig.check` found no broken rule.

The resolved `TrainingConfig` is what the estimate reports, what the job stores and what
the worker trains with. `to_dict` and `from_dict` round-trip it (as diffusers' configs
do): what is stored with a job is what the worker reloads. No protobuf in here; the
servicer's edge (`services.trainer.messages`) maps to and from the wire.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, TypeVar

from services.common.errors import FieldViolation, InvalidArgument


class Preset(StrEnum):
    CUSTOM = "custom"  # the fields as given
    ANIME = "anime"
    REALISTIC = "realistic"
    SCENE = "scene"


class Optimizer(StrEnum):
    ADAMW = "adamw"
    ADAMW_8BIT = "adamw_8bit"  # needs bitsandbytes and a CUDA GPU
    LION = "lion"
    PRODIGY = "prodigy"  # adapts its own step size; learning rates default to 1.0


class MixedPrecision(StrEnum):
    AUTO = "auto"  # fp16 on a GPU, none on a CPU
    NO = "no"
    FP16 = "fp16"
    BF16 = "bf16"


@dataclass(frozen=True)
class PresetAdvice:
    """Repeat range of the seed's advice, and the defaults a preset fills in."""

    repeats: tuple[int, int | None]
    default_repeats: int
    clip_skip: int


PRESETS: dict[Preset, PresetAdvice] = {
    Preset.ANIME: PresetAdvice((10, 16), 12, 2),
    Preset.REALISTIC: PresetAdvice((17, 35), 20, 1),
    Preset.SCENE: PresetAdvice((50, None), 50, 1),
}
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "cosine",
    "cosine_with_restarts",
    "linear",
    "polynomial",
)
DEFAULT_NETWORK_DIM = 32
DEFAULT_LEARNING_RATE = 1e-4
DEFAULT_TEXT_ENCODER_LR = 5e-5
PRODIGY_LEARNING_RATE = 1.0
DEFAULT_LR_SCHEDULER = "cosine"
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 1
DEFAULT_RESOLUTION = 512
DEFAULT_CLIP_SKIP = 1
MAX_SAMPLE_PROMPTS = 8
MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**32 - 1
INT_BOUNDS = {
    "network_dim": (1, 256),
    "epochs": (1, 1000),
    "batch_size": (1, 64),
    "clip_skip": (1, 12),
    "repeats": (0, 1000),
    "lr_warmup_steps": (0, 1_000_000),
    "sample_every_n_steps": (0, 1_000_000),
    "save_every_n_epochs": (0, 1000),
    "max_train_steps": (0, 10_000_000),
    "save_state_every_n_steps": (0, 10_000_000),
}
LEARNING_RATES = ("learning_rate", "unet_lr", "text_encoder_lr")
T = TypeVar("T")
_ID = re.compile(r"^[0-9a-f]{32}$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_()+\-][A-Za-z0-9 _.()+\-]{0,127}$")


@dataclass(frozen=True)
class RequestedConfig:
    """What a client asked for; None (or the zero of a plain field) means "the default".

    A choice this version does not know (a newer client's enum number) is carried as it
    came, so that `check` refuses it with the field's rule like any other broken value.
    """

    dataset_id: str = ""
    base_model: str = ""
    output_name: str = ""
    preset: Preset = Preset.CUSTOM
    network_dim: int | None = None
    network_alpha: float | None = None  # default network_dim / 2
    learning_rate: float | None = None
    unet_lr: float | None = None  # default learning_rate
    text_encoder_lr: float | None = None
    train_text_encoder: bool = False
    optimizer: Optimizer = Optimizer.ADAMW
    lr_scheduler: str | None = None
    lr_warmup_steps: int = 0
    repeats: int | None = None  # default the preset's, else 0: each image's own
    epochs: int | None = None
    batch_size: int | None = None
    resolution: int | None = None
    bucketing: bool = False
    mixed_precision: MixedPrecision = MixedPrecision.AUTO
    gradient_checkpointing: bool = False
    cache_latents: bool | None = None
    cache_text_embeddings: bool | None = None  # always off when train_text_encoder
    noise_offset: float = 0.0
    min_snr_gamma: float = 0.0
    clip_skip: int | None = None  # default the preset's, else 1
    seed: int | None = None  # default random, recorded in the resolved config
    sample_every_n_steps: int = 0
    sample_prompts: tuple[str, ...] = ()
    save_every_n_epochs: int = 0
    max_train_steps: int = 0
    save_state_every_n_steps: int = 0


@dataclass(frozen=True)
class TrainingConfig:
    """A resolved configuration: every field set, every rule kept (see `resolve_config`).

    `repeats` 0 means each image's own (its `N_concept` folder); `max_train_steps`,
    `sample_every_n_steps`, `save_every_n_epochs` and `save_state_every_n_steps` 0 mean
    never (no cap, no samples, only the final LoRA, saved state at epoch ends only).
    """

    dataset_id: str
    base_model: str
    output_name: str
    preset: Preset
    network_dim: int
    network_alpha: float
    learning_rate: float
    unet_lr: float
    text_encoder_lr: float
    train_text_encoder: bool
    optimizer: Optimizer
    lr_scheduler: str
    lr_warmup_steps: int
    repeats: int
    epochs: int
    batch_size: int
    resolution: int
    bucketing: bool
    mixed_precision: MixedPrecision
    gradient_checkpointing: bool
    cache_latents: bool
    cache_text_embeddings: bool
    noise_offset: float
    min_snr_gamma: float
    clip_skip: int
    seed: int
    sample_every_n_steps: int
    sample_prompts: tuple[str, ...]
    save_every_n_epochs: int
    max_train_steps: int
    save_state_every_n_steps: int

    def check(self) -> None:
        """InvalidArgument listing every broken rule, each field named `config.<field>`."""
        problems = [FieldViolation(f"config.{name}", rule) for name, rule in self._broken()]
        if problems:
            raise InvalidArgument.many(problems)

    def _broken(self) -> list[tuple[str, str]]:
        return [
            *self._broken_identity(),
            *self._broken_bounds(),
            *self._broken_choices(),
            *self._broken_extras(),
        ]

    def _broken_identity(self) -> list[tuple[str, str]]:
        broken = []
        if not _ID.match(self.dataset_id):
            broken.append(("dataset_id", "is required: the id of one of your datasets (32 hex)"))
        for name in ("base_model", "output_name"):
            value = getattr(self, name)
            if not _MODEL_NAME.match(value) or ".." in value:
                broken.append((name, "is required: 1-128 of A-Z a-z 0-9 space _ . ( ) + -"))
        if not isinstance(self.preset, Preset):
            broken.append(("preset", "must be ANIME, REALISTIC, SCENE or unset"))
        return broken

    def _broken_bounds(self) -> list[tuple[str, str]]:
        broken = [
            (name, f"must be in {low}..{high}")
            for name, (low, high) in INT_BOUNDS.items()
            if not low <= getattr(self, name) <= high
        ]
        if not (64 <= self.resolution <= 1024 and self.resolution % 64 == 0):
            broken.append(("resolution", "must be a multiple of 64 in 64..1024"))
        if not (math.isfinite(self.network_alpha) and 0 < self.network_alpha <= self.network_dim):
            broken.append(("network_alpha", "must be in (0, network_dim]"))
        for name in LEARNING_RATES:
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 < value <= 10):
                broken.append((name, "must be a number in (0, 10]"))
        return broken

    def _broken_choices(self) -> list[tuple[str, str]]:
        broken = []
        if not isinstance(self.optimizer, Optimizer):
            broken.append(("optimizer", "must be ADAMW, ADAMW_8BIT, LION or PRODIGY"))
        if not isinstance(self.mixed_precision, MixedPrecision):
            broken.append(("mixed_precision", "must be NO, FP16, BF16 or unset"))
        if self.lr_scheduler not in LR_SCHEDULERS:
            broken.append(("lr_scheduler", f"must be one of {', '.join(LR_SCHEDULERS)}"))
        return broken

    def _broken_extras(self) -> list[tuple[str, str]]:
        broken = []
        if not (math.isfinite(self.noise_offset) and 0 <= self.noise_offset <= 1):
            broken.append(("noise_offset", "must be in [0, 1]"))
        if not (math.isfinite(self.min_snr_gamma) and 0 <= self.min_snr_gamma <= 100):
            broken.append(("min_snr_gamma", "must be in [0, 100] (0 disables it)"))
        if not 0 <= self.seed <= MAX_SEED:
            broken.append(("seed", f"must be in 0..{MAX_SEED}"))
        if len(self.sample_prompts) > MAX_SAMPLE_PROMPTS:
            broken.append(("sample_prompts", f"at most {MAX_SAMPLE_PROMPTS} prompts"))
        if any(len(p) > MAX_PROMPT_CHARS for p in self.sample_prompts):
            broken.append(("sample_prompts", f"each prompt at most {MAX_PROMPT_CHARS} characters"))
        return broken

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (choices as their names), the form a job is stored in."""
        return {
            **asdict(self),
            "preset": self.preset.value,
            "optimizer": self.optimizer.value,
            "mixed_precision": self.mixed_precision.value,
            "sample_prompts": list(self.sample_prompts),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingConfig:
        """The config `to_dict` wrote. Not checked again: it was checked when resolved, and
        a stored job must stay readable even if a later version tightens a rule."""
        return cls(
            **{
                **values,
                "preset": Preset(values["preset"]),
                "optimizer": Optimizer(values["optimizer"]),
                "mixed_precision": MixedPrecision(values["mixed_precision"]),
                "sample_prompts": tuple(values["sample_prompts"]),
            }
        )


def resolve_config(requested: RequestedConfig) -> TrainingConfig:
    """The configuration `requested` means: preset and defaults applied, then checked once
    (InvalidArgument naming every broken field and its rule)."""
    config = fill_defaults(requested)
    config.check()
    return config


def fill_defaults(requested: RequestedConfig) -> TrainingConfig:
    """The preset and defaults applied, not checked: for a configuration checked when it was
    first resolved (a job stored before `to_dict`); a request goes through `resolve_config`."""
    return TrainingConfig(**{**asdict(requested), **_defaults(requested)})


def _defaults(r: RequestedConfig) -> dict[str, Any]:
    """The value of every field a request may leave unset; some follow other fields (alpha
    the rank, learning rates the optimizer, repeats and clip skip the preset)."""
    preset = PRESETS.get(r.preset)
    dim = _given(r.network_dim, DEFAULT_NETWORK_DIM)
    prodigy = r.optimizer == Optimizer.PRODIGY
    rate = _given(r.learning_rate, PRODIGY_LEARNING_RATE if prodigy else DEFAULT_LEARNING_RATE)
    text_rate = PRODIGY_LEARNING_RATE if prodigy else DEFAULT_TEXT_ENCODER_LR
    return {
        "network_dim": dim,
        "network_alpha": _given(r.network_alpha, max(dim / 2, 1.0)),
        "learning_rate": rate,
        "unet_lr": _given(r.unet_lr, rate),
        "text_encoder_lr": _given(r.text_encoder_lr, text_rate),
        "lr_scheduler": _given(r.lr_scheduler, DEFAULT_LR_SCHEDULER),
        "repeats": _given(r.repeats, preset.default_repeats if preset else 0),
        "epochs": _given(r.epochs, DEFAULT_EPOCHS),
        "batch_size": _given(r.batch_size, DEFAULT_BATCH_SIZE),
        "resolution": _given(r.resolution, DEFAULT_RESOLUTION),
        "cache_latents": _given(r.cache_latents, True),
        # the text encoder's outputs cannot be cached while it is being trained
        "cache_text_embeddings": _given(r.cache_text_embeddings, True) and not r.train_text_encoder,
        "clip_skip": _given(r.clip_skip, preset.clip_skip if preset else DEFAULT_CLIP_SKIP),
        "seed": r.seed if r.seed is not None else random.randint(0, MAX_SEED),
    }


def _given(value: T | None, default: T) -> T:
    return default if value is None else value
