"""Image-making modes on the tiny SD model: seeds, img2img, inpaint, hi-res fix, tiles, variations.

The tiny model has random weights, so its VAE does not give back what it encodes. Where a test
asks "how close to the input", it compares with the VAE round trip of the input (what a real
model's output tends to at strength 0), and the VAE's scaling factor is calibrated, as SD's
0.18215 was, so the latents have unit variance and strength means what it does on a real model.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image

from services.common.errors import InvalidArgument
from services.common.generation import Settings
from services.generator import deep_cache, modes
from services.generator.model_cache import compile_unet
from services.generator.modes import Sampling
from services.generator.samplers import SAMPLERS, make_scheduler
from services.generator.seamless import set_seamless

SIZE = 64
NEEDS_SCIPY = {"LMS", "LMS Karras"}  # diffusers' LMSDiscreteScheduler imports scipy

pytestmark = pytest.mark.filterwarnings(
    # diffusers' KDPM2 schedulers turn tensors into numpy arrays on every step
    "ignore:__array_wrap__ must accept context and return_scalar:DeprecationWarning"
)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny model gains nothing from threads, and a lone thread does not spin-wait when
    other processes share the cores (several times faster then)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe(tiny_model_files: Any) -> StableDiffusionPipeline:
    loaded = StableDiffusionPipeline.from_pretrained(
        tiny_model_files.diffusers_dir, local_files_only=True
    )
    loaded.set_progress_bar_config(disable=True)
    with torch.no_grad():
        latents = loaded.vae.encode(modes.vae.pixel_tensor(_gradient())).latent_dist.mode()
    loaded.vae.register_to_config(scaling_factor=1.0 / latents.std().item())
    return loaded


@pytest.fixture(scope="module")
def embeds(pipe: StableDiffusionPipeline) -> tuple[torch.Tensor, torch.Tensor]:
    return pipe.encode_prompt("a red house on a hill", "cpu", 1, True, "blurry")


@pytest.fixture(scope="module")
def make(
    pipe: StableDiffusionPipeline, embeds: tuple[torch.Tensor, torch.Tensor]
) -> Callable[..., Sampling]:
    config = dict(pipe.scheduler.config)

    def build(seeds: list[int], steps: int = 4, sampler: Any = None, **extra: Any) -> Sampling:
        scheduler = sampler or EulerDiscreteScheduler
        return Sampling(
            prompt_embeds=embeds[0],
            negative_embeds=embeds[1],
            scheduler_factory=lambda: scheduler.from_config(config),
            steps=steps,
            cfg_scale=7.0,
            seeds=seeds,
            **extra,
        )

    return build


def _gradient(width: int = SIZE, height: int = SIZE) -> Image.Image:
    array = np.zeros((height, width, 3), np.uint8)
    array[..., 0] = np.linspace(0, 255, width)[None, :]
    array[..., 1] = np.linspace(0, 255, height)[:, None]
    array[..., 2] = 128
    return Image.fromarray(array)


def _square_mask(low: int, high: int, size: int = SIZE) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (low, low, high, high))
    return mask


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int32)


def _mad(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def _roundtrip(pipe: StableDiffusionPipeline, image: Image.Image) -> Image.Image:
    return modes.vae.decode(pipe, modes.vae.encode(pipe, image))[0]


# --- initial noise -------------------------------------------------------------------------

SHAPE = (4, 8, 8)


def test_noise_is_the_seeds_cpu_noise_and_repeats() -> None:
    expected = torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(42))
    noise = modes.initial_noise(SHAPE, [42])
    assert noise.shape == (1, *SHAPE)
    assert torch.equal(noise[0], expected)
    assert torch.equal(modes.initial_noise(SHAPE, [42]), noise)


def test_noise_of_an_image_does_not_depend_on_the_batch() -> None:
    batch = modes.initial_noise(SHAPE, [7, 8])
    assert torch.equal(batch[1], modes.initial_noise(SHAPE, [8])[0])
    assert not torch.equal(batch[0], batch[1])


def test_variation_strength_slides_from_seed_to_subseed_noise() -> None:
    seed, sub = modes.initial_noise(SHAPE, [1])[0], modes.initial_noise(SHAPE, [2])[0]
    assert torch.equal(modes.initial_noise(SHAPE, [1], [2], 0.0)[0], seed)
    assert torch.equal(modes.initial_noise(SHAPE, [1], [2], 1.0)[0], sub)
    half = modes.initial_noise(SHAPE, [1], [2], 0.5)[0]
    to_seed, to_sub = (half - seed).abs().mean(), (half - sub).abs().mean()
    assert 0.1 < to_seed < (seed - sub).abs().mean()
    assert abs(to_seed - to_sub) < 0.15 * to_seed
    assert 0.8 < half.std() < 1.2  # slerp keeps it noise-like, unlike a plain average


def test_variation_seeds_must_match_the_seeds() -> None:
    with pytest.raises(InvalidArgument) as caught:
        modes.initial_noise(SHAPE, [1, 2], [3], 0.5)
    assert caught.value.violations[0].field == "params.subseed"


# --- txt2img -------------------------------------------------------------------------------


def test_txt2img_same_seed_same_image(pipe: StableDiffusionPipeline, make: Callable) -> None:
    first = modes.txt2img(pipe, make([5]), SIZE, SIZE)
    again = modes.txt2img(pipe, make([5]), SIZE, SIZE)
    other = modes.txt2img(pipe, make([6]), SIZE, SIZE)
    assert first[0].size == (SIZE, SIZE) and first[0].mode == "RGB"
    assert np.array_equal(_array(first[0]), _array(again[0]))
    assert _mad(first[0], other[0]) > 1


def test_ensd_moves_only_the_step_noise(pipe: StableDiffusionPipeline, make: Callable) -> None:
    """A1111's ENSD seeds the noise samplers draw at each step (seed + delta): an ancestral
    sampler's picture changes, reproducibly; a sampler that draws none keeps its picture."""
    ancestral = EulerAncestralDiscreteScheduler
    plain = modes.txt2img(pipe, make([5], sampler=ancestral), SIZE, SIZE)[0]
    moved = modes.txt2img(
        pipe,
        make([5], sampler=ancestral, settings=Settings(eta_noise_seed_delta=31337)),
        SIZE,
        SIZE,
    )
    again = modes.txt2img(
        pipe,
        make([5], sampler=ancestral, settings=Settings(eta_noise_seed_delta=31337)),
        SIZE,
        SIZE,
    )
    assert _mad(plain, moved[0]) > 1
    assert np.array_equal(_array(moved[0]), _array(again[0]))
    euler = modes.txt2img(pipe, make([5]), SIZE, SIZE)[0]
    euler_ensd = modes.txt2img(
        pipe, make([5], settings=Settings(eta_noise_seed_delta=31337)), SIZE, SIZE
    )[0]
    assert np.array_equal(_array(euler), _array(euler_ensd))


def test_txt2img_batch_image_equals_its_seed_alone(
    pipe: StableDiffusionPipeline, make: Callable
) -> None:
    ancestral = EulerAncestralDiscreteScheduler
    batch = modes.txt2img(pipe, make([10, 11], sampler=ancestral), SIZE, SIZE)
    alone = modes.txt2img(pipe, make([11], sampler=ancestral), SIZE, SIZE)
    assert np.abs(_array(batch[1]) - _array(alone[0])).max() <= 2


def test_seamless_tiling_makes_the_unet_and_vae_wrap_around(
    pipe: StableDiffusionPipeline, embeds: tuple
) -> None:
    """A1111 "Tiling": with circular padding, shifting the latents shifts the U-Net's output
    and the decoded picture the same way, across the edges, so nothing marks a seam; with
    plain padding the edges differ. The U-Net shifts by whole multiples of its downsampling."""
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    step = 2 ** (len(pipe.unet.down_blocks) - 1)

    def wrap_errors() -> tuple[float, float]:
        with torch.no_grad():
            rolled_in = pipe.unet(torch.roll(latents, (step, 2 * step), (2, 3)), 500, embeds[0])
            rolled_out = torch.roll(
                pipe.unet(latents, 500, embeds[0]).sample, (step, 2 * step), (2, 3)
            )
            decoded_in = pipe.vae.decode(torch.roll(latents, (3, 5), (2, 3))).sample
            decoded_out = torch.roll(pipe.vae.decode(latents).sample, (24, 40), (2, 3))
        unet = (rolled_in.sample - rolled_out).abs().max().item()
        return unet, (decoded_in - decoded_out).abs().max().item()

    try:
        set_seamless(pipe.unet, True)
        set_seamless(pipe.vae, True)
        assert max(wrap_errors()) < 1e-4
    finally:
        set_seamless(pipe.unet, False)
        set_seamless(pipe.vae, False)
    assert min(wrap_errors()) > 0.1


def test_deep_cache_shallow_path_on_fresh_features_is_the_whole_unet(
    pipe: StableDiffusionPipeline, embeds: tuple
) -> None:
    """The shallow path rebuilds the U-Net's first level around the kept deep features: given
    the features of the same input, it must give exactly the whole U-Net's output."""
    sample = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    timestep, text = torch.tensor([900.0, 250.0]), embeds[0].repeat(2, 1, 1)
    with torch.no_grad():
        whole, features = deep_cache.full_pass(pipe.unet, sample, timestep, text)
        shallow = deep_cache.shallow_pass(pipe.unet, sample, timestep, text, features)
        later = deep_cache.shallow_pass(pipe.unet, sample * 0.9, timestep - 50, text, features)
    assert torch.allclose(shallow, whole, atol=1e-5)
    assert not torch.allclose(later, whole, atol=1e-3)


def test_deep_cache_runs_the_whole_unet_every_nth_pass_and_stays_close(
    pipe: StableDiffusionPipeline, make: Callable
) -> None:
    whole_passes = 0

    def count(*_: Any) -> None:
        nonlocal whole_passes
        whole_passes += 1

    plain = modes.txt2img(pipe, make([5], steps=8), SIZE, SIZE)[0]
    handle = pipe.unet.mid_block.register_forward_hook(count)
    try:
        cached = modes.txt2img(
            pipe, make([5], steps=8, settings=Settings(deep_cache_interval=3)), SIZE, SIZE
        )[0]
    finally:
        handle.remove()
    assert whole_passes == 3  # passes 0, 3 and 6 of 8
    other_seed = modes.txt2img(pipe, make([6], steps=8), SIZE, SIZE)[0]
    assert 0 < _mad(cached, plain) < min(3.0, _mad(other_seed, plain) / 5)
    off = modes.txt2img(
        pipe, make([5], steps=8, settings=Settings(deep_cache_interval=1)), SIZE, SIZE
    )[0]
    assert _mad(off, plain) == 0


@pytest.mark.parametrize("interval", [-1, 11])
def test_deep_cache_interval_out_of_range_is_refused(make: Callable, interval: int) -> None:
    """The stage checks again what the request's check already refuses (built unchecked)."""
    with pytest.raises(InvalidArgument) as refused:
        make([1], settings=Settings.model_construct(deep_cache_interval=interval))
    assert refused.value.violations[0].field == "params.deep_cache_interval"


def test_txt2img_matches_diffusers_given_the_same_noise(
    pipe: StableDiffusionPipeline, make: Callable, embeds: tuple
) -> None:
    reference = StableDiffusionPipeline(
        **{
            **pipe.components,
            "scheduler": EulerDiscreteScheduler.from_config(pipe.scheduler.config),
        },
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    expected = reference(
        prompt_embeds=embeds[0],
        negative_prompt_embeds=embeds[1],
        latents=modes.initial_noise((4, 8, 8), [3]),
        num_inference_steps=4,
        guidance_scale=7.0,
        width=SIZE,
        height=SIZE,
    ).images[0]
    ours = modes.txt2img(pipe, make([3]), SIZE, SIZE)[0]
    assert np.abs(_array(expected) - _array(ours)).max() <= 1


def test_progress_previews_and_cancel(pipe: StableDiffusionPipeline, make: Callable) -> None:
    steps: list[tuple[int, int]] = []
    previews: list[torch.Tensor] = []
    modes.txt2img(
        pipe, make([1], on_step=lambda *a: steps.append(a), on_latents=previews.append), SIZE, SIZE
    )
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert len(previews) == 4
    preview = modes.cheap_preview(previews[-1])
    assert preview.mode == "RGB" and preview.size == (SIZE // 8, SIZE // 8)

    def cancel(step: int, total: int) -> None:
        raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        modes.txt2img(pipe, make([1], on_step=cancel), SIZE, SIZE)


def test_cheap_preview_is_a1111_projection() -> None:
    latents = torch.zeros(4, 2, 3)
    latents[0] = 1.0  # channel 0 alone: RGB (0.298, 0.207, 0.208) before (x + 1) / 2
    pixels = np.asarray(modes.cheap_preview(latents))
    assert pixels.shape == (2, 3, 3)
    assert tuple(pixels[0, 0]) == tuple(round((v + 1) / 2 * 255) for v in (0.298, 0.207, 0.208))


# --- img2img -------------------------------------------------------------------------------


def test_img2img_strength_sets_how_far_it_departs(
    pipe: StableDiffusionPipeline, make: Callable
) -> None:
    source = _gradient()
    baseline = _roundtrip(pipe, source)
    low = modes.img2img(pipe, make([3], steps=20), source, strength=0.05, width=SIZE, height=SIZE)
    high = modes.img2img(pipe, make([3], steps=20), source, strength=0.95, width=SIZE, height=SIZE)
    assert _mad(low[0], baseline) < 8
    assert _mad(high[0], baseline) > 3 * _mad(low[0], baseline)


def test_img2img_same_seed_same_image_and_strength_zero_is_identity(
    pipe: StableDiffusionPipeline, make: Callable
) -> None:
    source = _gradient()
    args = {"strength": 0.6, "width": SIZE, "height": SIZE}
    first = modes.img2img(pipe, make([9]), source, **args)[0]
    assert np.array_equal(_array(first), _array(modes.img2img(pipe, make([9]), source, **args)[0]))
    untouched = modes.img2img(pipe, make([9]), source, strength=0, width=SIZE, height=SIZE)[0]
    assert np.array_equal(_array(untouched), _array(source))


def test_img2img_noise_is_the_seeds_noise_as_in_diffusers(
    pipe: StableDiffusionPipeline, make: Callable, embeds: tuple
) -> None:
    """With a plain seed, ours equals diffusers' img2img drawing that seed's noise itself."""
    source = _gradient()
    reference = StableDiffusionImg2ImgPipeline(
        **{
            **pipe.components,
            "scheduler": EulerDiscreteScheduler.from_config(pipe.scheduler.config),
        },
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    expected = reference(
        prompt_embeds=embeds[0],
        negative_prompt_embeds=embeds[1],
        image=modes.vae.encode(pipe, source),
        strength=0.6,
        num_inference_steps=10,
        guidance_scale=7.0,
        generator=[torch.Generator("cpu").manual_seed(21)],
    ).images[0]
    ours = modes.img2img(pipe, make([21], steps=10), source, strength=0.6, width=SIZE, height=SIZE)
    assert np.abs(_array(expected) - _array(ours[0])).max() <= 1


def test_img2img_variation_seed_at_full_strength_is_that_seed(
    pipe: StableDiffusionPipeline, make: Callable
) -> None:
    source, args = _gradient(), {"strength": 0.7, "width": SIZE, "height": SIZE}
    varied = modes.img2img(pipe, make([1], subseeds=[2], subseed_strength=1.0), source, **args)
    plain = modes.img2img(pipe, make([2]), source, **args)
    halfway = modes.img2img(pipe, make([1], subseeds=[2], subseed_strength=0.5), source, **args)
    assert np.abs(_array(varied[0]) - _array(plain[0])).max() <= 1
    assert _mad(halfway[0], plain[0]) > 1


@pytest.mark.parametrize("mode", modes.RESIZE_MODES)
def test_img2img_resize_modes_give_the_requested_size(
    pipe: StableDiffusionPipeline, make: Callable, mode: str
) -> None:
    wide = _gradient(80, 48)
    out = modes.img2img(
        pipe, make([1], steps=2), wide, strength=0.5, width=64, height=96, resize_mode=mode
    )
    assert out[0].size == (64, 96)


def test_resize_modes_keep_the_aspect_ratio_as_a1111() -> None:
    wide = Image.new("RGB", (100, 50), (200, 10, 10))
    wide.paste((10, 10, 200), (0, 0, 10, 50))  # a blue band on the left edge
    cropped = modes.resize_image(wide, "crop_and_resize", 64, 64)
    filled = np.asarray(modes.resize_image(wide, "resize_and_fill", 64, 64))
    assert cropped.size == (64, 64)
    assert np.asarray(cropped)[32, 0, 0] > 150  # the blue edge was cropped away
    assert filled.shape == (64, 64, 3)
    assert np.array_equal(filled[0], filled[15])  # the band above is the stretched top row


# --- inpaint -------------------------------------------------------------------------------

# Blur 4 reaches int(2.5 * 4 + 0.5) = 10 pixels: a mask painted on [24, 40) blurs into [14, 50).
OUTSIDE = (slice(0, 14), slice(50, SIZE))


def _unchanged_outside(out: Image.Image, source: Image.Image) -> bool:
    diff = np.abs(_array(out) - _array(source))
    rows = diff[OUTSIDE[0]].max() == 0 and diff[OUTSIDE[1]].max() == 0
    cols = diff[:, OUTSIDE[0]].max() == 0 and diff[:, OUTSIDE[1]].max() == 0
    return bool(rows and cols)


@pytest.mark.parametrize("fill", modes.INPAINT_FILLS)
def test_inpaint_repaints_the_mask_and_keeps_the_rest_exactly(
    pipe: StableDiffusionPipeline, make: Callable, fill: str
) -> None:
    source = _gradient()
    out = modes.inpaint(
        pipe, make([4]), source, _square_mask(24, 40), fill=fill, width=SIZE, height=SIZE
    )[0]
    assert out.size == source.size
    assert _unchanged_outside(out, source)
    assert _mad(_array(out)[24:40, 24:40], _array(source)[24:40, 24:40]) > 10


def test_inpaint_takes_img2img_resize_mode_and_noise_multiplier(
    pipe: StableDiffusionPipeline, make: Callable
) -> None:
    """The image is fitted by the resize mode, outside the mask exactly; a lower noise
    multiplier changes the repainted area."""
    source = _gradient(96, 64)
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (40, 24, 56, 40))
    size = {"width": SIZE, "height": SIZE}
    runs = {
        (mode, multiplier): modes.inpaint(
            pipe,
            make([4]),
            source,
            mask,
            resize_mode=mode,
            initial_noise_multiplier=multiplier,
            **size,
        )[0]
        for mode, multiplier in (("just_resize", 1), ("crop_and_resize", 1), ("just_resize", 0.5))
    }
    assert len({image.tobytes() for image in runs.values()}) == 3
    for (mode, _), out in runs.items():
        fitted = _array(modes.resize_image(source, mode, SIZE, SIZE))
        assert np.array_equal(_array(out)[:8], fitted[:8]), mode
    with pytest.raises(InvalidArgument) as raised:
        modes.inpaint(pipe, make([4]), source, mask, resize_mode="latent_upscale", **size)
    assert raised.value.violations[0].field == "img2img.resize_mode"


def test_inpaint_only_masked_keeps_the_outside(
    pipe: StableDiffusionPipeline, make: Callable
) -> None:
    source = _gradient(96, 96)
    mask = Image.new("L", (96, 96), 0)
    mask.paste(255, (56, 56, 72, 72))
    out = modes.inpaint(
        pipe, make([4]), source, mask, only_masked=True, padding=8, width=SIZE, height=SIZE
    )[0]
    diff = np.abs(_array(out) - _array(source))
    assert out.size == (96, 96)
    assert diff[:44].max() == 0 and diff[:, :44].max() == 0 and diff[84:].max() == 0
    assert diff[56:72, 56:72].mean() > 10


def test_inpaint_invert_repaints_the_other_side(
    pipe: StableDiffusionPipeline, make: Callable
) -> None:
    source = _gradient()
    out = modes.inpaint(
        pipe, make([4]), source, _square_mask(16, 48), invert=True, width=SIZE, height=SIZE
    )[0]
    diff = np.abs(_array(out) - _array(source))
    assert diff[26:38, 26:38].max() == 0  # the white square (less the blur) is kept
    assert diff[:6, :6].mean() > 10


def test_inpaint_reads_a_transparent_masks_alpha(
    pipe: StableDiffusionPipeline, make: Callable
) -> None:
    """A1111/Gradio masks: opaque strokes (any colour) on a transparent background."""
    stroke = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    stroke.paste((0, 0, 0, 255), (24, 24, 40, 40))
    source, size = _gradient(), {"width": SIZE, "height": SIZE}
    from_alpha = modes.inpaint(pipe, make([4]), source, stroke, **size)[0]
    from_gray = modes.inpaint(pipe, make([4]), source, _square_mask(24, 40), **size)[0]
    assert np.array_equal(_array(from_alpha), _array(from_gray))


def test_inpaint_mask_errors_name_the_mask(pipe: StableDiffusionPipeline, make: Callable) -> None:
    source = _gradient()
    bad = [
        (Image.new("L", (32, 32), 255), False),
        (Image.new("L", (SIZE, SIZE), 0), False),
        (Image.new("L", (SIZE, SIZE), 255), True),
    ]
    for mask, invert in bad:
        with pytest.raises(InvalidArgument) as caught:
            modes.inpaint(pipe, make([1]), source, mask, invert=invert, width=SIZE, height=SIZE)
        assert caught.value.violations[0].field == "inpaint.mask"
    with pytest.raises(InvalidArgument, match=r"same size as the image \(64x64\)"):
        modes.inpaint(pipe, make([1]), source, bad[0][0], width=SIZE, height=SIZE)


def test_inpaint_with_a_9_channel_inpainting_checkpoint(
    pipe: StableDiffusionPipeline, make: Callable
) -> None:
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 9}).eval()
    inpainting = StableDiffusionPipeline(
        **{**pipe.components, "unet": unet}, requires_safety_checker=False
    )
    source = _gradient()
    out = modes.inpaint(
        inpainting, make([4]), source, _square_mask(24, 40), width=SIZE, height=SIZE
    )
    assert _unchanged_outside(out[0], source)
    assert modes.txt2img(inpainting, make([4]), SIZE, SIZE)[0].size == (SIZE, SIZE)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_runs_img2img_and_inpaint(
    pipe: StableDiffusionPipeline, make: Callable, name: str
) -> None:
    if name in NEEDS_SCIPY:
        pytest.importorskip("scipy")
    config = dict(pipe.scheduler.config)
    sampling = replace(
        make([3], steps=3), scheduler_factory=lambda: make_scheduler(SAMPLERS[name], config)
    )
    source = _gradient()
    edited = modes.img2img(pipe, sampling, source, strength=0.7, width=SIZE, height=SIZE)
    painted = modes.inpaint(pipe, sampling, source, _square_mask(24, 40), width=SIZE, height=SIZE)
    assert edited[0].size == (SIZE, SIZE)
    assert _unchanged_outside(painted[0], source)
    assert np.isfinite(_array(edited[0])).all()


def test_mask_blur_is_a1111s_gaussian() -> None:
    line = Image.new("L", (41, 5), 0)
    line.paste(255, (20, 0, 21, 5))
    row = np.asarray(modes.blur_mask(line, 4), dtype=np.float64)[2]
    offsets = np.arange(-10, 11)
    kernel = np.exp(-(offsets**2) / 32.0)
    assert np.abs(row[10:31] - 255 * kernel / kernel.sum()).max() <= 0.5
    assert row[:10].max() == 0 and row[31:].max() == 0


def test_mask_blur_per_axis_spreads_only_that_way() -> None:
    dot = Image.new("L", (41, 41), 0)
    dot.paste(255, (20, 20, 21, 21))
    wide = np.asarray(modes.blur_mask(dot, 4, 0))
    tall = np.asarray(modes.blur_mask(dot, 0, 4))
    assert wide[20, 12:29].min() > 0 and wide[19].max() == 0 and wide[21].max() == 0
    assert np.array_equal(tall, wide.T)


# --- hi-res fix ----------------------------------------------------------------------------


def _lanczos_to(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.resize((width, height), Image.Resampling.LANCZOS)


@pytest.mark.parametrize("upscaler", [*modes.LATENT_UPSCALERS, "pixels"])
def test_hires_fix_upscales_and_reports_both_passes(
    pipe: StableDiffusionPipeline, make: Callable, upscaler: str
) -> None:
    """Every latent upscaler by name, and pixels upscaled by a callable."""
    steps: list[tuple[str, int, int]] = []
    first = make([2], on_step=lambda s, t: steps.append(("first", s, t)))
    second = make([2], steps=3, on_step=lambda s, t: steps.append(("second", s, t)))
    out = modes.hires_fix(
        pipe,
        first,
        second,
        width=SIZE,
        height=SIZE,
        scale=2.0,
        upscaler=_lanczos_to if upscaler == "pixels" else upscaler,
    )
    assert out[0].size == (2 * SIZE, 2 * SIZE)
    assert [s for s in steps if s[0] == "first"] == [("first", i, 4) for i in range(1, 5)]
    assert [s for s in steps if s[0] == "second"] == [("second", i, 3) for i in range(1, 4)]


@pytest.mark.parametrize("upscaler", modes.LATENT_UPSCALERS)
def test_latent_upscalers_take_bfloat16_latents(upscaler: str) -> None:
    """The generator's CPU precision with AMX; antialiased interpolation has no bfloat16 kernel."""
    latents = torch.randn(2, 4, 8, 8).to(torch.bfloat16)
    mode = modes.LATENT_UPSCALERS[upscaler]
    upscaled = modes.hires._upscale_latents(latents, mode, (128, 96))
    assert (upscaled.shape, upscaled.dtype) == ((2, 4, 12, 16), torch.bfloat16)


def test_hires_fix_resize_to_both_sides_crops_and_takes_a_callable(
    pipe: StableDiffusionPipeline, make: Callable
) -> None:
    calls: list[tuple[int, int]] = []

    def upscale(image: Image.Image, width: int, height: int) -> Image.Image:
        calls.append((width, height))
        return image.resize((width, height))

    out = modes.hires_fix(
        pipe,
        make([2]),
        make([2]),
        width=SIZE,
        height=SIZE,
        resize_x=128,
        resize_y=96,
        upscaler=upscale,
    )
    assert calls == [(128, 128)]  # covers 128x96, then the centre is cropped
    assert out[0].size == (128, 96)
    assert modes.hires_sizes(64, 96, 1.5) == ((96, 144), (96, 144))


# --- tiled refine, upscale, variation ------------------------------------------------------


def test_tiled_refine_keeps_the_size_and_strength_zero_is_identity(
    pipe: StableDiffusionPipeline, make: Callable
) -> None:
    steps: list[tuple[int, int]] = []
    image = _gradient(192, 128)
    sampling = make([1], on_step=lambda *a: steps.append(a))
    out = modes.tiled_refine(pipe, sampling, image, tile=128, overlap=32, strength=0.5)
    assert out.size == (192, 128)
    assert steps[-1] == (4, 4)  # 2 tiles of int(4 * 0.5) = 2 steps each, reported as one run
    same = modes.tiled_refine(pipe, make([1]), image, tile=128, overlap=32, strength=0)
    assert np.array_equal(_array(same), _array(image))


def test_one_tile_is_img2img_with_the_first_seed(
    pipe: StableDiffusionPipeline, make: Callable
) -> None:
    image = _gradient(128, 128)
    tiled = modes.tiled_refine(pipe, make([8]), image, tile=128, overlap=32, strength=0.5)
    plain = modes.img2img(pipe, make([8]), image, strength=0.5, width=128, height=128)[0]
    assert np.abs(_array(tiled) - _array(plain)).max() <= 1


def test_tile_weights_fade_out_at_every_inner_edge() -> None:
    """No seams: a tile's weight falls to ~0 at each edge that lies inside the image."""
    for length, tile, overlap in [(192, 128, 32), (500, 128, 64), (1000, 512, 64), (200, 64, 8)]:
        starts = modes.upscale._tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] == length - tile
        assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))
        total = np.zeros(length)
        for index, start in enumerate(starts):
            weight = modes.upscale._ramp(starts, index, tile)
            total[start : start + tile] += weight
            if index > 0:
                assert weight[0] <= 0.5 / overlap
            if index + 1 < len(starts):
                assert weight[-1] <= 0.5 / overlap
        assert total.min() > 0.5
    two = modes.upscale._tile_starts(192, 128, 32)
    overlap = modes.upscale._ramp(two, 0, 128)[64:] + modes.upscale._ramp(two, 1, 128)[:64]
    assert np.allclose(overlap, 1.0)


def test_upscale_then_refine(pipe: StableDiffusionPipeline, make: Callable) -> None:
    def lanczos(image: Image.Image, scale: float) -> Image.Image:
        size = (round(image.width * scale), round(image.height * scale))
        return image.resize(size, Image.Resampling.LANCZOS)

    out = modes.upscale_then_refine(
        pipe,
        make([1], steps=2),
        _gradient(),
        scale=1.5,
        upscaler=lanczos,
        tile=64,
        overlap=16,
        strength=0.5,
    )
    assert out.size == (96, 96)


def test_variation_subtle_departs_less_than_strong(
    pipe: StableDiffusionPipeline, make: Callable
) -> None:
    source = _gradient()
    baseline = _roundtrip(pipe, source)
    subtle = modes.variation(pipe, make([1, 2], steps=10), source, strength="subtle")
    strong = modes.variation(pipe, make([1, 2], steps=10), source, strength="strong")
    assert [image.size for image in subtle + strong] == [source.size] * 4
    assert np.mean([_mad(i, baseline) for i in subtle]) < np.mean(
        [_mad(i, baseline) for i in strong]
    )


# --- validation ----------------------------------------------------------------------------


def _calls(pipe: StableDiffusionPipeline, s: Sampling) -> dict[str, Callable[[], Any]]:
    image, mask = _gradient(), _square_mask(24, 40)
    size = {"width": SIZE, "height": SIZE}
    return {
        "img2img.denoising_strength": lambda: modes.img2img(pipe, s, image, strength=1.5, **size),
        "img2img.resize_mode": lambda: modes.img2img(
            pipe, s, image, strength=0.5, resize_mode="stretch", **size
        ),
        "img2img.initial_noise_multiplier": lambda: modes.img2img(
            pipe, s, image, strength=0.5, initial_noise_multiplier=2.0, **size
        ),
        "params.width": lambda: modes.txt2img(pipe, s, 65, SIZE),
        "inpaint.mask_blur": lambda: modes.inpaint(pipe, s, image, mask, mask_blur=100, **size),
        "inpaint.fill": lambda: modes.inpaint(pipe, s, image, mask, fill="sky", **size),
        "hires.scale": lambda: modes.hires_fix(pipe, s, s, scale=5.0, **size),
        "hires.upscaler": lambda: modes.hires_fix(pipe, s, s, upscaler="Magic", **size),
        "hires.resize_x": lambda: modes.hires_fix(pipe, s, s, resize_x=100, **size),
        "upscale.tile_size": lambda: modes.tiled_refine(pipe, s, image, tile=32),
        "upscale.tile_overlap": lambda: modes.tiled_refine(pipe, s, image, tile=64, overlap=40),
        "upscale.denoising_strength": lambda: modes.tiled_refine(pipe, s, image, strength=-0.1),
        "upscale.scale": lambda: modes.upscale_then_refine(
            pipe, s, image, scale=9, upscaler=lambda i, f: i, tile=64, overlap=8, strength=0.3
        ),
        "variation.strength": lambda: modes.variation(pipe, s, image, strength="medium"),
    }


def test_bad_arguments_name_their_field(pipe: StableDiffusionPipeline, make: Callable) -> None:
    for field, call in _calls(pipe, make([1])).items():
        with pytest.raises(InvalidArgument) as caught:
            call()
        assert caught.value.violations[0].field == field, field


def test_sampling_checks_its_own_fields(make: Callable) -> None:
    with pytest.raises(InvalidArgument, match=r"params\.steps"):
        replace(make([1]), steps=0)
    with pytest.raises(InvalidArgument, match=r"params\.subseed"):
        make([1, 2], subseeds=[3])


@torch.no_grad()
def test_deep_cache_and_tiling_reach_a_compiled_unet(tiny_model_files: Any) -> None:
    """A U-Net compiled as `SDSTACK_COMPILE_UNET` compiles it, having run ordinary passes
    first: DeepCache's whole passes still hand over the features entering the last up block,
    and tiling still pads circularly, as on the eager U-Net."""

    def fresh() -> StableDiffusionPipeline:
        return StableDiffusionPipeline.from_pretrained(
            tiny_model_files.diffusers_dir, local_files_only=True
        )

    compiled, eager = fresh(), fresh()
    compile_unet(compiled.unet, backend="eager")  # dynamo's capture, without inductor's wait
    sample = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    timestep, text = torch.tensor(500), torch.randn(2, 77, 32)

    def both(run: Callable[[UNet2DConditionModel], Any]) -> list[Any]:
        return [run(pipe.unet) for pipe in (compiled, eager)]

    def ordinary(unet: UNet2DConditionModel) -> torch.Tensor:
        return unet(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]

    both(ordinary)  # compiles the graph a whole DeepCache pass calls
    (whole, kept), (expected, features) = both(
        lambda unet: deep_cache.full_pass(unet, sample, timestep, text)
    )
    torch.testing.assert_close(whole, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(kept, features, rtol=0, atol=1e-6)
    for tiled in (True, False):
        both(lambda unet, tiled=tiled: set_seamless(unet, tiled))
        got, want = both(ordinary)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@torch.no_grad()
def test_a_compiled_unet_keeps_compiling_on_job_threads_past_dynamos_default_limit(
    tiny_model_files: Any,
) -> None:
    """Every job runs on a thread of its own, where dynamo's global recompile limit (8, kept
    per thread) would send a U-Net that has met more kinds of passes back to eager for good:
    the compiled U-Net carries its own limit."""
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model_files.diffusers_dir, local_files_only=True
    )
    graphs: list[torch.fx.GraphModule] = []

    def count_graphs(graph: torch.fx.GraphModule, _inputs: list) -> Callable[..., Any]:
        graphs.append(graph)
        return graph.forward

    compile_unet(pipe.unet, backend=count_graphs, dynamic=False)  # a graph per latent size
    sides = [8 * n for n in range(1, 11)]

    def job() -> None:
        with torch.no_grad():
            for side in sides:
                sample = torch.randn(1, 4, side, side)
                pipe.unet(sample, 500, encoder_hidden_states=torch.randn(1, 77, 32))

    worker = threading.Thread(target=job)
    worker.start()
    worker.join()
    assert len(graphs) == len(sides)
