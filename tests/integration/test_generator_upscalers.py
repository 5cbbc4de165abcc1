"""Built-in upscalers and inpaint's img2img options through the generator's gRPC API.

Every upscaler ListUpscalers names is accepted by that name where it applies: pixel ones
(Lanczos, Nearest) for upscales and hi-res fix, latent ones (A1111's `Latent …` modes) for
hi-res fix only. A pixel upscale samples nothing, so it asks the model cache for nothing.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from PIL import Image

from services.common.clients import GeneratorClient
from services.common.errors import RemoteError
from services.common.infotext import parse_infotext
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2
from services.generator.modes import LATENT_UPSCALERS, resize_image
from tests.generator_support import SIZE, generate, metric
from tests.stack_fixtures import RunningStack

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def generator(running_stack: RunningStack) -> Iterator[GeneratorClient]:
    with GeneratorClient(running_stack.settings.target("generator"), timeout=120) as client:
        yield client


def _source(width: int, height: int) -> Image.Image:
    """A picture with detail at every pixel, so resampling filters differ."""
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _pixels(image: common_pb2.GeneratedImage) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image.png)).convert("RGB"))


def test_every_builtin_upscaler_is_listed(generator: GeneratorClient) -> None:
    listed = [
        u.name for u in generator.stub.ListUpscalers(generator_pb2.ListUpscalersRequest()).upscalers
    ]
    assert listed[: 2 + len(LATENT_UPSCALERS)] == ["Lanczos", "Nearest", *LATENT_UPSCALERS]


def test_hires_fix_takes_every_latent_upscaler_and_nearest_by_name(
    generator: GeneratorClient,
) -> None:
    pictures = {}
    for upscaler in [*LATENT_UPSCALERS, "Nearest"]:
        (image,) = generate(
            generator,
            hires={"enabled": True, "scale": 2, "upscaler": upscaler, "second_pass_steps": 2},
        )
        assert (image.width, image.height) == (2 * SIZE, 2 * SIZE)
        assert parse_infotext(image.infotext).params["Hires upscaler"] == upscaler
        pictures[upscaler] = _pixels(image).tobytes()
    # Antialiasing changes only a downscale, so each interpolation's own picture is the test.
    distinct = [pictures[name] for name in ("Latent", "Latent (bicubic)", "Latent (nearest)")]
    assert len({*distinct, pictures["Nearest"]}) == 4, "two interpolations made one picture"


def test_a_pixel_upscale_asks_the_model_cache_for_no_checkpoint(
    generator: GeneratorClient, running_stack: RunningStack
) -> None:
    source = _source(40, 24)
    generate(generator, params={"steps": 1})  # the checkpoint is loaded: only look-ups would count
    before = metric(running_stack, "sdstack_model_cache_requests_total")
    (image,) = generate(
        generator,
        mode=generator_pb2.GENERATION_MODE_UPSCALE,
        upscale={"image": {"data": _png(source)}, "upscaler": "Nearest", "scale": 3},
    )
    assert metric(running_stack, "sdstack_model_cache_requests_total") == before
    expected = source.resize((120, 72), Image.Resampling.NEAREST)
    assert np.array_equal(_pixels(image), np.asarray(expected))


def test_a_latent_upscaler_is_refused_for_an_upscale_by_name(generator: GeneratorClient) -> None:
    with pytest.raises(RemoteError) as raised:
        generate(
            generator,
            mode=generator_pb2.GENERATION_MODE_UPSCALE,
            upscale={"image": {"data": _png(_source(32, 32))}, "upscaler": "Latent (bicubic)"},
        )
    assert raised.value.status is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in raised.value.violations] == ["upscale.upscaler"]


def _inpaint(
    generator: GeneratorClient, source: Image.Image, mask: Image.Image, **img2img: object
) -> list[common_pb2.GeneratedImage]:
    return generate(
        generator,
        mode=generator_pb2.GENERATION_MODE_INPAINT,
        img2img={"init_image": {"data": _png(source)}, **img2img},
        inpaint={"mask": {"data": _png(mask)}},
    )


def test_inpaint_takes_img2img_resize_mode_and_noise_multiplier(
    generator: GeneratorClient,
) -> None:
    source, mask = _source(96, 64), Image.new("L", (96, 64), 0)
    mask.paste(255, (40, 24, 56, 40))
    crop = generator_pb2.RESIZE_MODE_CROP_AND_RESIZE
    runs = {
        "just_resize": _inpaint(generator, source, mask),
        "crop_and_resize": _inpaint(generator, source, mask, resize_mode=crop),
        "less noise": _inpaint(generator, source, mask, initial_noise_multiplier=0.5),
    }
    pictures = {name: _pixels(image) for name, (image,) in runs.items()}
    assert len({picture.tobytes() for picture in pictures.values()}) == 3
    for mode in ("just_resize", "crop_and_resize"):
        fitted = np.asarray(resize_image(source, mode, SIZE, SIZE))
        assert np.array_equal(pictures[mode][:8], fitted[:8]), f"{mode}: the outside moved"
    with pytest.raises(RemoteError) as raised:
        _inpaint(generator, source, mask, resize_mode=generator_pb2.RESIZE_MODE_LATENT_UPSCALE)
    assert raised.value.status is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in raised.value.violations] == ["img2img.resize_mode"]
