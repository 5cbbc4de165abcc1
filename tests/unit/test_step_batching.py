"""Batched U-Net passes on the tiny U-Net: each job's rows get what they would get alone.

The batch runner is driven directly with parked passes, so which jobs share a pass is certain
(through the service it depends on timing; `test_generator_modes` covers that path).
"""

from __future__ import annotations

import threading

import pytest
import torch
from diffusers import UNet2DConditionModel

from services.generator import deep_cache
from services.generator.deep_cache import DeepCache
from services.generator.step_batching import _Pass, _run_batch, run_unet_alone
from services.generator.tiny_model import TinyModelFiles

TOKENS, WIDTH = 77, 32


@pytest.fixture(scope="module")
def unet(tiny_model_files: TinyModelFiles) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(
        str(tiny_model_files.diffusers_dir), subfolder="unet", local_files_only=True
    )


def _inputs(unet: UNet2DConditionModel, rows: int, seed: int) -> dict[str, torch.Tensor]:
    draw = torch.Generator().manual_seed(seed)
    dim = unet.config.cross_attention_dim
    return {
        "sample": torch.randn(rows, 4, 16, 16, generator=draw),
        "timestep": torch.tensor(float(100 + 37 * seed)),
        "embeds": torch.randn(rows, TOKENS, dim, generator=draw),
    }


def _parked(unet: UNet2DConditionModel, job: dict, cache: DeepCache | None) -> _Pass:
    return _Pass(threading.get_ident(), unet, loras=None, cache=cache, **job)


@torch.no_grad()
def test_deep_cache_jobs_keep_and_reuse_their_own_rows(unet: UNet2DConditionModel) -> None:
    """Two DeepCache jobs and a plain one share a whole pass: each caching job keeps the
    features of its own rows. Then the two share a shallow pass on those features."""
    first, second, plain = (_inputs(unet, rows, seed) for rows, seed in ((2, 1), (4, 2), (2, 3)))
    caches = DeepCache(3), DeepCache(2)
    for cache in caches:
        cache.plan(0)
    whole = [_parked(unet, first, caches[0]), _parked(unet, second, caches[1])]
    _run_batch([*whole, _parked(unet, plain, None)])

    for job, cache, parked in zip((first, second), caches, whole, strict=True):
        alone, features = deep_cache.full_pass(unet, **job)
        assert parked.shared and torch.allclose(parked.output, alone, atol=1e-5)
        assert cache.features is not None and torch.allclose(cache.features, features, atol=1e-5)

    later = [_inputs(unet, 2, 4), _inputs(unet, 4, 5)]
    for cache in caches:
        cache.plan(1)
        assert cache.reuse
    shallow = [_parked(unet, job, cache) for job, cache in zip(later, caches, strict=True)]
    _run_batch(shallow)
    for job, cache, parked in zip(later, caches, shallow, strict=True):
        alone = run_unet_alone(unet, **job, cache=cache)
        assert torch.allclose(parked.output, alone, atol=1e-5)
        assert not torch.allclose(alone, run_unet_alone(unet, **job), atol=1e-3)


@torch.no_grad()
def test_shallow_and_whole_passes_run_apart(unet: UNet2DConditionModel) -> None:
    """A job reusing its features and a job needing the whole U-Net park together: each gets
    the output it gets alone (they cannot share one call)."""
    reusing, whole_job = _inputs(unet, 2, 6), _inputs(unet, 2, 7)
    cache = DeepCache(2)
    cache.plan(0)
    run_unet_alone(unet, **reusing, cache=cache)
    cache.plan(1)
    passes = [_parked(unet, reusing, cache), _parked(unet, whole_job, None)]
    _run_batch(passes)
    assert torch.allclose(passes[0].output, run_unet_alone(unet, **reusing, cache=cache))
    assert torch.allclose(passes[1].output, run_unet_alone(unet, **whole_job), atol=1e-5)
