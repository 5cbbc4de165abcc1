"""A1111's "Tiling": images that tile seamlessly, from circular convolution padding.

A1111 sets `padding_mode = "circular"` on every Conv2d of the U-Net and the VAE for the job.
The networks then see the latent image as a torus: with no positional encoding in SD's
attention, nothing marks the edges, so the right edge continues into the left one and the
bottom into the top.

The U-Net and VAE are shared by every job on the checkpoint, so the padding is set right before
each use: per batched U-Net pass (`step_batching`) and whenever a job takes its turn to decode
or encode. The model's Conv2d layers are listed once and the attribute only written on change,
so a job that leaves tiling off pays nothing.
"""

from __future__ import annotations

import weakref

from torch import nn

_CONVS: weakref.WeakKeyDictionary[nn.Module, list[nn.Conv2d]] = weakref.WeakKeyDictionary()


def set_seamless(model: nn.Module, enabled: bool) -> None:
    """Circular padding on every Conv2d of `model` when `enabled`, zero padding otherwise."""
    mode = "circular" if enabled else "zeros"
    convs = _CONVS.get(model)
    if convs is None:
        convs = [module for module in model.modules() if isinstance(module, nn.Conv2d)]
        _CONVS[model] = convs
    elif convs and convs[0].padding_mode == mode:
        return
    for conv in convs:
        conv.padding_mode = mode
