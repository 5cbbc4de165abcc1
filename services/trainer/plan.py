"""A training configuration made whole: presets and defaults applied, every field checked,
and the numbers a designer wants before starting (total steps, file size, warnings).

`resolve_config` is pure (no store, no device), so EstimateTraining, StartTraining and the
worker all agree on what a configuration means. The resolved configuration is stored with
the job and beside the LoRA it produced (`ss_*` metadata), as diffusers keeps its configs.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from services.common.errors import FieldViolation, InvalidArgument
from services.common.proto.sdstack.v1 import trainer_pb2

LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "cosine",
    "cosine_with_restarts",
    "linear",
    "polynomial",
)
RECOMMENDED_STEPS = (1500, 6000)
MIN_IMAGES = 10
MAX_RANK_FOR_6GB = 128
MAX_SAMPLE_PROMPTS = 8
MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**32 - 1
_ID = re.compile(r"^[0-9a-f]{32}$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_()+\-][A-Za-z0-9 _.()+\-]{0,127}$")
# Σ(in + out features) of the layers a LoRA adapts in SD 1.5: U-Net attention projections and
# feed-forward (160 layers), CLIP attention and MLP (72 layers). Measured from the models.
SD15_UNET_FEATURES = 374_016
SD15_TEXT_FEATURES = 165_888
SAVE_BYTES_PER_WEIGHT = 2  # saved in fp16, as kohya does by default


@dataclass(frozen=True)
class Preset:
    """Repeat range of the seed's advice, and the defaults a preset fills in."""

    name: str
    repeats: tuple[int, int | None]
    default_repeats: int
    clip_skip: int


PRESETS: dict[int, Preset] = {
    trainer_pb2.TRAINING_PRESET_ANIME: Preset("anime", (10, 16), 12, 2),
    trainer_pb2.TRAINING_PRESET_REALISTIC: Preset("realistic", (17, 35), 20, 1),
    trainer_pb2.TRAINING_PRESET_SCENE: Preset("scene", (50, None), 50, 1),
}


@dataclass(frozen=True)
class DatasetShape:
    """What the estimate needs of a dataset: each image's repeats and, for bucketing, size."""

    repeats: Sequence[int]
    sizes: Sequence[tuple[int, int]]


def resolve_config(config: trainer_pb2.TrainingConfig) -> trainer_pb2.TrainingConfig:
    """A copy of `config` with the preset and defaults applied; InvalidArgument listing every
    broken rule (fields named `config.<field>`)."""
    resolved = trainer_pb2.TrainingConfig()
    resolved.CopyFrom(config)
    problems: list[FieldViolation] = []
    _check_identity(resolved, problems)
    _apply_defaults(resolved)
    _check_ranges(resolved, problems)
    if problems:
        raise InvalidArgument.many(problems)
    return resolved


def _bad(problems: list[FieldViolation], field: str, rule: str) -> None:
    problems.append(FieldViolation(f"config.{field}", rule))


def _check_identity(c: trainer_pb2.TrainingConfig, problems: list[FieldViolation]) -> None:
    if not _ID.match(c.dataset_id):
        _bad(problems, "dataset_id", "is required: the id of one of your datasets (32 hex)")
    for field in ("base_model", "output_name"):
        value = getattr(c, field)
        if not _MODEL_NAME.match(value) or ".." in value:
            _bad(problems, field, "is required: 1-128 of A-Z a-z 0-9 space _ . ( ) + -")
    if c.preset and c.preset not in PRESETS:
        _bad(problems, "preset", "must be ANIME, REALISTIC, SCENE or unset")


def _apply_defaults(c: trainer_pb2.TrainingConfig) -> None:
    preset = PRESETS.get(c.preset)
    if preset is not None:
        c.repeats = c.repeats or preset.default_repeats
        c.clip_skip = c.clip_skip or preset.clip_skip
    c.network_dim = c.network_dim or 32
    if not c.HasField("network_alpha"):
        c.network_alpha = max(c.network_dim / 2, 1.0)
    prodigy = c.optimizer == trainer_pb2.OPTIMIZER_PRODIGY
    c.optimizer = c.optimizer or trainer_pb2.OPTIMIZER_ADAMW
    if not c.HasField("learning_rate"):
        c.learning_rate = 1.0 if prodigy else 1e-4
    if not c.HasField("unet_lr"):
        c.unet_lr = c.learning_rate
    if not c.HasField("text_encoder_lr"):
        c.text_encoder_lr = 1.0 if prodigy else 5e-5
    c.lr_scheduler = c.lr_scheduler or "cosine"
    c.epochs = c.epochs or 10
    c.batch_size = c.batch_size or 1
    c.resolution = c.resolution or 512
    if not c.HasField("cache_latents"):
        c.cache_latents = True
    if not c.HasField("cache_text_embeddings") or c.train_text_encoder:
        c.cache_text_embeddings = not c.train_text_encoder
    c.clip_skip = c.clip_skip or 1
    if not c.HasField("seed"):
        c.seed = random.randint(0, MAX_SEED)


def _check_ranges(c: trainer_pb2.TrainingConfig, problems: list[FieldViolation]) -> None:
    ints = {
        "network_dim": (c.network_dim, 1, 256),
        "epochs": (c.epochs, 1, 1000),
        "batch_size": (c.batch_size, 1, 64),
        "clip_skip": (c.clip_skip, 1, 12),
        "repeats": (c.repeats, 0, 1000),
        "lr_warmup_steps": (c.lr_warmup_steps, 0, 1_000_000),
        "sample_every_n_steps": (c.sample_every_n_steps, 0, 1_000_000),
        "save_every_n_epochs": (c.save_every_n_epochs, 0, 1000),
        "max_train_steps": (c.max_train_steps, 0, 10_000_000),
        "save_state_every_n_steps": (c.save_state_every_n_steps, 0, 10_000_000),
    }
    for field, (value, low, high) in ints.items():
        if not low <= value <= high:
            _bad(problems, field, f"must be in {low}..{high}")
    if not (64 <= c.resolution <= 1024 and c.resolution % 64 == 0):
        _bad(problems, "resolution", "must be a multiple of 64 in 64..1024")
    if not (math.isfinite(c.network_alpha) and 0 < c.network_alpha <= c.network_dim):
        _bad(problems, "network_alpha", "must be in (0, network_dim]")
    for field in ("learning_rate", "unet_lr", "text_encoder_lr"):
        value = getattr(c, field)
        if not (math.isfinite(value) and 0 < value <= 10):
            _bad(problems, field, "must be a number in (0, 10]")
    if c.optimizer not in trainer_pb2.Optimizer.values():
        _bad(problems, "optimizer", "must be ADAMW, ADAMW_8BIT, LION or PRODIGY")
    if c.mixed_precision not in trainer_pb2.MixedPrecision.values():
        _bad(problems, "mixed_precision", "must be NO, FP16, BF16 or unset")
    if c.lr_scheduler not in LR_SCHEDULERS:
        _bad(problems, "lr_scheduler", f"must be one of {', '.join(LR_SCHEDULERS)}")
    if not (math.isfinite(c.noise_offset) and 0 <= c.noise_offset <= 1):
        _bad(problems, "noise_offset", "must be in [0, 1]")
    if not (math.isfinite(c.min_snr_gamma) and 0 <= c.min_snr_gamma <= 100):
        _bad(problems, "min_snr_gamma", "must be in [0, 100] (0 disables it)")
    if not 0 <= c.seed <= MAX_SEED:
        _bad(problems, "seed", f"must be in 0..{MAX_SEED}")
    if len(c.sample_prompts) > MAX_SAMPLE_PROMPTS:
        _bad(problems, "sample_prompts", f"at most {MAX_SAMPLE_PROMPTS} prompts")
    if any(len(p) > MAX_PROMPT_CHARS for p in c.sample_prompts):
        _bad(problems, "sample_prompts", f"each prompt at most {MAX_PROMPT_CHARS} characters")


# --- the estimate ----------------------------------------------------------------------------


def bucket_resolutions(
    resolution: int, minimum: int = 256, maximum: int = 1024, step: int = 64
) -> list[tuple[int, int]]:
    """kohya's buckets: every (width, height) in steps of `step` within [minimum, maximum]
    whose area is at most resolution²."""
    minimum = min(minimum, resolution)
    area = resolution * resolution
    sizes = set()
    width = minimum
    while width <= maximum:
        height = min(maximum, (area // width) // step * step)
        if height >= minimum:
            sizes.add((width, height))
            sizes.add((height, width))
        width += step
    return sorted(sizes)


def nearest_bucket(size: tuple[int, int], buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to `size`'s (the larger one on ties)."""
    ratio = size[0] / size[1]
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1] / ratio)), -b[0] * b[1]))


def batches_per_epoch(
    config: trainer_pb2.TrainingConfig, shape: DatasetShape, repeats_override: int = 0
) -> int:
    """Batches in one epoch: images × repeats per bucket (one bucket without bucketing),
    each bucket rounded up to whole batches, as kohya does."""
    counts: dict[tuple[int, int], int] = {}
    buckets = bucket_resolutions(config.resolution) if config.bucketing else []
    for index, repeats in enumerate(shape.repeats):
        key = nearest_bucket(shape.sizes[index], buckets) if buckets else (0, 0)
        counts[key] = counts.get(key, 0) + (repeats_override or repeats)
    return sum(math.ceil(n / config.batch_size) for n in counts.values())


def estimated_file_bytes(config: trainer_pb2.TrainingConfig) -> int:
    """Size of the LoRA file for an SD 1.5 base: down and up matrices of every adapted layer
    in fp16, plus a small header."""
    features = SD15_UNET_FEATURES + (SD15_TEXT_FEATURES if config.train_text_encoder else 0)
    return features * config.network_dim * SAVE_BYTES_PER_WEIGHT + 64 * 1024


def estimate(
    config: trainer_pb2.TrainingConfig, shape: DatasetShape
) -> trainer_pb2.TrainingEstimate:
    """Total steps, file size and warnings for a resolved configuration on a dataset."""
    images = len(shape.repeats)
    per_epoch = batches_per_epoch(config, shape, config.repeats)
    total = per_epoch * config.epochs
    if config.max_train_steps:
        total = min(total, config.max_train_steps)
    repeats = config.repeats or _typical_repeats(shape.repeats)
    result = trainer_pb2.TrainingEstimate(
        total_steps=total,
        images=images,
        repeats=repeats,
        epochs=config.epochs,
        batch_size=config.batch_size,
        estimated_file_bytes=estimated_file_bytes(config),
        warnings=warnings_for(config, images, repeats, total),
    )
    result.resolved.CopyFrom(config)
    return result


def _typical_repeats(repeats: Sequence[int]) -> int:
    return round(sum(repeats) / len(repeats)) if repeats else 0


def warnings_for(
    config: trainer_pb2.TrainingConfig, images: int, repeats: int, total_steps: int
) -> list[str]:
    """The advice of the seed's workflow, as sentences a designer can act on."""
    found = []
    low, high = RECOMMENDED_STEPS
    if total_steps < low:
        found.append(
            f"total steps {total_steps} are below the recommended {low}-{high}: "
            "the LoRA may learn too little (raise repeats or epochs)"
        )
    elif total_steps > high:
        found.append(
            f"total steps {total_steps} are above the recommended {low}-{high}: "
            "the LoRA may overfit (lower repeats or epochs)"
        )
    if images < MIN_IMAGES:
        found.append(f"only {images} images: {MIN_IMAGES} or more (20-50 is typical) learn better")
    if config.network_dim > MAX_RANK_FOR_6GB:
        found.append(
            f"rank {config.network_dim} is high: above {MAX_RANK_FOR_6GB} training needs more "
            "than a 6 GB GPU and the file grows (try 32-128)"
        )
    if config.batch_size > max(images, 1):
        found.append(f"batch size {config.batch_size} is larger than the {images} images")
    preset = PRESETS.get(config.preset)
    if preset is not None:
        lowest, highest = preset.repeats
        if repeats < lowest or (highest is not None and repeats > highest):
            wanted = f"{lowest}-{highest}" if highest else f"{lowest} or more"
            found.append(f"preset {preset.name} recommends repeats {wanted}, got {repeats}")
    return found
