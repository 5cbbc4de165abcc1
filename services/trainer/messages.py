"""Training configurations and estimates, protobuf ⇄ domain: the one mapping each way.

The servicer maps every request's `TrainingConfig` here and every estimate it returns;
the job store uses it only to read jobs stored as protobuf JSON (before `to_dict`).
proto3's conventions stay on this side: a zero or an absent optional field is "unset"
(None in `RequestedConfig`), and a float arrives as float32, which is read back as the
shortest decimal that is the same float32 (0.01, not 0.009999999776482582), as protobuf's
JSON writes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import numpy as np
from google.protobuf.message import Message

from services.common.proto.sdstack.v1 import trainer_pb2
from services.trainer.config import (
    MixedPrecision,
    Optimizer,
    Preset,
    RequestedConfig,
    TrainingConfig,
    fill_defaults,
)
from services.trainer.plan import TrainingEstimate

Choice = TypeVar("Choice", Preset, Optimizer, MixedPrecision)

PRESETS = {
    Preset.CUSTOM: trainer_pb2.TRAINING_PRESET_UNSPECIFIED,
    Preset.ANIME: trainer_pb2.TRAINING_PRESET_ANIME,
    Preset.REALISTIC: trainer_pb2.TRAINING_PRESET_REALISTIC,
    Preset.SCENE: trainer_pb2.TRAINING_PRESET_SCENE,
}
OPTIMIZERS = {
    Optimizer.ADAMW: trainer_pb2.OPTIMIZER_ADAMW,
    Optimizer.ADAMW_8BIT: trainer_pb2.OPTIMIZER_ADAMW_8BIT,
    Optimizer.LION: trainer_pb2.OPTIMIZER_LION,
    Optimizer.PRODIGY: trainer_pb2.OPTIMIZER_PRODIGY,
}
PRECISIONS = {
    MixedPrecision.AUTO: trainer_pb2.MIXED_PRECISION_UNSPECIFIED,
    MixedPrecision.NO: trainer_pb2.MIXED_PRECISION_NO,
    MixedPrecision.FP16: trainer_pb2.MIXED_PRECISION_FP16,
    MixedPrecision.BF16: trainer_pb2.MIXED_PRECISION_BF16,
}
_FROM_PRESETS = {number: preset for preset, number in PRESETS.items()}
_FROM_OPTIMIZERS = {
    trainer_pb2.OPTIMIZER_UNSPECIFIED: Optimizer.ADAMW,
    **{number: optimizer for optimizer, number in OPTIMIZERS.items()},
}
_FROM_PRECISIONS = {number: precision for precision, number in PRECISIONS.items()}


def config_from_message(m: trainer_pb2.TrainingConfig) -> RequestedConfig:
    """What the client asked for; `resolve_config` gives it its meaning and checks it."""
    return RequestedConfig(
        dataset_id=m.dataset_id,
        base_model=m.base_model,
        output_name=m.output_name,
        preset=_choice(_FROM_PRESETS, m.preset),
        network_dim=m.network_dim or None,
        network_alpha=_optional_float(m, "network_alpha"),
        learning_rate=_optional_float(m, "learning_rate"),
        unet_lr=_optional_float(m, "unet_lr"),
        text_encoder_lr=_optional_float(m, "text_encoder_lr"),
        train_text_encoder=m.train_text_encoder,
        optimizer=_choice(_FROM_OPTIMIZERS, m.optimizer),
        lr_scheduler=m.lr_scheduler or None,
        lr_warmup_steps=m.lr_warmup_steps,
        repeats=m.repeats or None,
        epochs=m.epochs or None,
        batch_size=m.batch_size or None,
        resolution=m.resolution or None,
        bucketing=m.bucketing,
        mixed_precision=_choice(_FROM_PRECISIONS, m.mixed_precision),
        gradient_checkpointing=m.gradient_checkpointing,
        cache_latents=m.cache_latents if m.HasField("cache_latents") else None,
        cache_text_embeddings=(
            m.cache_text_embeddings if m.HasField("cache_text_embeddings") else None
        ),
        noise_offset=_float(m.noise_offset),
        min_snr_gamma=_float(m.min_snr_gamma),
        clip_skip=m.clip_skip or None,
        seed=m.seed if m.HasField("seed") else None,
        sample_every_n_steps=m.sample_every_n_steps,
        sample_prompts=tuple(m.sample_prompts),
        save_every_n_epochs=m.save_every_n_epochs,
        max_train_steps=m.max_train_steps,
        save_state_every_n_steps=m.save_state_every_n_steps,
    )


def config_message(config: TrainingConfig) -> trainer_pb2.TrainingConfig:
    """Every field set (the domain's names are the wire's), choices as their numbers."""
    return trainer_pb2.TrainingConfig(
        **{
            **config.to_dict(),
            "preset": PRESETS[config.preset],
            "optimizer": OPTIMIZERS[config.optimizer],
            "mixed_precision": PRECISIONS[config.mixed_precision],
        }
    )


def estimate_message(estimate: TrainingEstimate) -> trainer_pb2.TrainingEstimate:
    resolved = config_message(estimate.resolved)
    return trainer_pb2.TrainingEstimate(**{**estimate.to_dict(), "resolved": resolved})


def estimate_from_message(m: trainer_pb2.TrainingEstimate) -> TrainingEstimate:
    """An estimate stored as protobuf; its config was resolved and checked when stored, and
    resolving a resolved config changes nothing."""
    return TrainingEstimate(
        total_steps=m.total_steps,
        images=m.images,
        repeats=m.repeats,
        epochs=m.epochs,
        batch_size=m.batch_size,
        estimated_file_bytes=m.estimated_file_bytes,
        warnings=tuple(m.warnings),
        resolved=fill_defaults(config_from_message(m.resolved)),
    )


def _choice(numbers: Mapping[int, Choice], number: int) -> Choice:
    """The choice a wire number stands for. A number this version does not know (a newer
    client's) is passed on as it is, for `TrainingConfig.check` to refuse by its rule."""
    return numbers.get(number, number)  # type: ignore[return-value]


def _float(value: float) -> float:
    return float(str(np.float32(value)))


def _optional_float(m: Message, name: str) -> float | None:
    return _float(getattr(m, name)) if m.HasField(name) else None
