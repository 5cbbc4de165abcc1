"""DeepCache step caching: a user's choice of speed over exactness.

Between neighbouring denoising steps the U-Net's deep, low-resolution features change little
(Ma et al., "DeepCache: Accelerating Diffusion Models for Free", CVPR 2024). With an interval
N, every Nth U-Net pass of a job runs the whole U-Net and keeps what enters its last up block;
the N−1 passes between run only the shallow path on those kept features: `conv_in`, the first
down block, the last up block and `conv_out`. On SD 1.5 that path is a fraction of the U-Net's
work, so N = 3 samples about twice as fast. The picture changes slightly, so it is off unless
asked for, and written in the infotext (`DeepCache interval: N`).

The kept features belong to the job's rows (its images, times the guidance copies), so jobs
that share U-Net batches (`step_batching`) each keep and reuse their own rows.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel

from services.common.errors import InvalidArgument
from services.common.generation.settings import MAX_DEEP_CACHE_INTERVAL as MAX_INTERVAL

FIELD = "params.deep_cache_interval"
RULE = f"must be between 0 and {MAX_INTERVAL} (0 or 1: off)"


@dataclass
class DeepCache:
    """One sampling run's kept features, and whether the coming pass reuses them."""

    interval: int
    features: torch.Tensor | None = None
    reuse: bool = False
    """Set by `plan`: the coming pass runs the shallow path on `features`."""

    def plan(self, pass_index: int) -> None:
        """Decides the coming pass: whole U-Net every `interval`th pass, shallow between."""
        self.reuse = self.features is not None and pass_index % self.interval != 0


def check_interval(interval: int) -> None:
    if not 0 <= interval <= MAX_INTERVAL:
        raise InvalidArgument(FIELD, RULE)


def check_supported(unet: UNet2DConditionModel) -> None:
    """The shallow path rebuilds SD 1.x/2.x's U-Net forward; refuse layouts it does not cover."""
    c = unet.config
    extras = (c.class_embed_type, c.addition_embed_type, c.encoder_hid_dim_type)
    if any(extra is not None for extra in extras) or c.center_input_sample:
        raise InvalidArgument(FIELD, "this checkpoint's U-Net layout does not support DeepCache")


def run_unet(
    unet: UNet2DConditionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    embeds: torch.Tensor,
    cache: DeepCache,
) -> torch.Tensor:
    """One pass for one run: the shallow path when `cache.reuse`, else the whole U-Net,
    keeping its deep features in `cache`."""
    if cache.reuse:
        assert cache.features is not None
        return shallow_pass(unet, sample, timestep, embeds, cache.features)
    output, cache.features = full_pass(unet, sample, timestep, embeds)
    return output


def full_pass(
    unet: UNet2DConditionModel, sample: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole U-Net's output, and the features entering its last up block."""
    tap = install_tap(unet)
    tap.keeping, tap.features = True, None
    try:
        output = unet(sample, timestep, encoder_hidden_states=embeds, return_dict=False)[0]
    finally:
        tap.keeping = False
    features, tap.features = tap.features, None
    if features is None:
        raise RuntimeError("the U-Net ran without its DeepCache tap")
    return output, features


def shallow_pass(
    unet: UNet2DConditionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    embeds: torch.Tensor,
    features: torch.Tensor,
) -> torch.Tensor:
    """The U-Net's output with `features` standing in for everything below its first level:
    exactly the whole U-Net's output when `features` come from the same input."""
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep))
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    hidden = unet.conv_in(sample)
    first, last = unet.down_blocks[0], unet.up_blocks[-1]
    if getattr(first, "has_cross_attention", False):
        _, skips = first(hidden_states=hidden, temb=emb, encoder_hidden_states=embeds)
    else:
        _, skips = first(hidden_states=hidden, temb=emb)
    if first.downsamplers is not None:
        skips = skips[:-1]  # the downsampled output feeds the next level, not the last up block
    skips = (hidden, *skips)
    if len(skips) != len(last.resnets):
        raise ValueError(f"the last up block takes {len(last.resnets)} skips, not {len(skips)}")
    if getattr(last, "has_cross_attention", False):
        out = last(
            hidden_states=features,
            temb=emb,
            res_hidden_states_tuple=skips,
            encoder_hidden_states=embeds,
        )
    else:
        out = last(hidden_states=features, temb=emb, res_hidden_states_tuple=skips)
    if unet.conv_norm_out is not None:
        out = unet.conv_act(unet.conv_norm_out(out))
    return unet.conv_out(out)


class _FeatureTap:
    """A forward pre-hook on the U-Net's last up block that keeps the features entering it
    while `keeping`. It stays on the block for good: a compiled U-Net's graphs never see hooks
    added after they were compiled (dynamo does not guard on hooks), so a hook added per pass
    would silently not run."""

    def __init__(self) -> None:
        self.keeping = False
        self.features: torch.Tensor | None = None

    def __call__(self, _: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if self.keeping:
            self.features = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


_TAPS: weakref.WeakKeyDictionary[torch.nn.Module, _FeatureTap] = weakref.WeakKeyDictionary()


def install_tap(unet: UNet2DConditionModel) -> _FeatureTap:
    """The U-Net's feature tap, hooked on first use. Call before compiling the U-Net."""
    block = unet.up_blocks[-1]
    if block not in _TAPS:
        _TAPS[block] = _FeatureTap()
        block.register_forward_pre_hook(_TAPS[block], with_kwargs=True)
    return _TAPS[block]
