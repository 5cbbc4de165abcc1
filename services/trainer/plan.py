"""What a resolved training configuration means on a dataset: total steps, file size and
warnings, the numbers a designer wants before starting.

Pure (no store, no device), so EstimateTraining, StartTraining and the worker agree. The
estimate, with the resolved configuration in it, is stored with the job; the configuration
itself (presets, defaults and bounds) is `services.trainer.config`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.trainer.config import PRESETS, TrainingConfig

RECOMMENDED_STEPS = (1500, 6000)
MIN_IMAGES = 10
MAX_RANK_FOR_6GB = 128
# Σ(in + out features) of the layers a LoRA adapts in SD 1.5: U-Net attention projections and
# feed-forward (160 layers), CLIP attention and MLP (72 layers). Measured from the models.
SD15_UNET_FEATURES = 374_016
SD15_TEXT_FEATURES = 165_888
SAVE_BYTES_PER_WEIGHT = 2  # saved in fp16, as kohya does by default


@dataclass(frozen=True)
class DatasetShape:
    """What the estimate needs of a dataset: each image's repeats and, for bucketing, size."""

    repeats: Sequence[int]
    sizes: Sequence[tuple[int, int]]


@dataclass(frozen=True)
class TrainingEstimate:
    """A job's numbers, fixed at start, with the configuration they were computed from."""

    total_steps: int  # images × repeats × epochs / batch_size, capped by max_train_steps
    images: int
    repeats: int  # per image, in the formula: the config's override or the dataset's
    epochs: int
    batch_size: int
    estimated_file_bytes: int
    warnings: tuple[str, ...]
    resolved: TrainingConfig

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, as a job stores its estimate."""
        return {
            "total_steps": self.total_steps,
            "images": self.images,
            "repeats": self.repeats,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "estimated_file_bytes": self.estimated_file_bytes,
            "warnings": list(self.warnings),
            "resolved": self.resolved.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingEstimate:
        return cls(
            **{
                **values,
                "warnings": tuple(values["warnings"]),
                "resolved": TrainingConfig.from_dict(values["resolved"]),
            }
        )


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
    config: TrainingConfig, shape: DatasetShape, repeats_override: int = 0
) -> int:
    """Batches in one epoch: images × repeats per bucket (one bucket without bucketing),
    each bucket rounded up to whole batches, as kohya does."""
    counts: dict[tuple[int, int], int] = {}
    buckets = bucket_resolutions(config.resolution) if config.bucketing else []
    for index, repeats in enumerate(shape.repeats):
        key = nearest_bucket(shape.sizes[index], buckets) if buckets else (0, 0)
        counts[key] = counts.get(key, 0) + (repeats_override or repeats)
    return sum(math.ceil(n / config.batch_size) for n in counts.values())


def estimated_file_bytes(config: TrainingConfig) -> int:
    """Size of the LoRA file for an SD 1.5 base: down and up matrices of every adapted layer
    in fp16, plus a small header."""
    features = SD15_UNET_FEATURES + (SD15_TEXT_FEATURES if config.train_text_encoder else 0)
    return features * config.network_dim * SAVE_BYTES_PER_WEIGHT + 64 * 1024


def estimate(config: TrainingConfig, shape: DatasetShape) -> TrainingEstimate:
    """Total steps, file size and warnings for a resolved configuration on a dataset."""
    images = len(shape.repeats)
    per_epoch = batches_per_epoch(config, shape, config.repeats)
    total = per_epoch * config.epochs
    if config.max_train_steps:
        total = min(total, config.max_train_steps)
    repeats = config.repeats or _typical_repeats(shape.repeats)
    return TrainingEstimate(
        total_steps=total,
        images=images,
        repeats=repeats,
        epochs=config.epochs,
        batch_size=config.batch_size,
        estimated_file_bytes=estimated_file_bytes(config),
        warnings=tuple(warnings_for(config, images, repeats, total)),
        resolved=config,
    )


def _typical_repeats(repeats: Sequence[int]) -> int:
    return round(sum(repeats) / len(repeats)) if repeats else 0


def warnings_for(config: TrainingConfig, images: int, repeats: int, total_steps: int) -> list[str]:
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
            found.append(f"preset {config.preset} recommends repeats {wanted}, got {repeats}")
    return found
