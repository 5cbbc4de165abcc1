"""The one generation request: one table of limits for both edges, one proto mapping."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from gateway.generation_body import GenerationCreate
from services.common.errors import InvalidArgument
from services.common.generation import GenerationRequest, Settings, Txt2Img
from services.common.generation.infotext import labelled_values, request_from_infotext
from services.common.generation.proto import (
    request_from_proto,
    request_to_proto,
    settings_from_proto,
    settings_to_proto,
)
from services.common.images import decode_image
from services.common.infotext import format_infotext, parse_infotext
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2
from services.generator.jobs import job_from_request

MAX_PIXELS = 4096 * 4096  # large: these tests are about the per-field table


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(out, format="PNG")
    return out.getvalue()


def _resolve(ref: common_pb2.ImageRef, field: str) -> Image.Image:
    return decode_image(ref.data, field, max_pixels=MAX_PIXELS)


def _http_accepts(body: dict) -> bool:
    try:
        GenerationCreate.model_validate(body).to_order("alice", "r1", MAX_PIXELS)
    except (InvalidArgument, ValueError):
        return False
    return True


def _grpc_accepts(params: dict) -> bool:
    try:
        job_from_request(
            generator_pb2.GenerateRequest(params=common_pb2.GenerationParams(**params)), MAX_PIXELS
        )
    except InvalidArgument:
        return False
    return True


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("width", [56, 63, 64, 72, 1001, 2040, 2048, 2056, 4096]),
        ("height", [56, 64, 2048, 2056]),
        ("steps", [1, 150, 151]),
        ("cfg_scale", [0.0, 29.5, 30.0, 30.5]),
        ("seed", [0, 4_294_967_294, 4_294_967_295]),
        ("batch_size", [1, 8, 9]),
        ("n_iter", [1, 16, 17]),
        ("clip_skip", [1, 12, 13]),
        ("deep_cache_interval", [0, 1, 10, 11]),
        ("subseed_strength", [0.0, 1.0, 1.5]),
        ("eta", [0.0, 1.0, 1.5]),
    ],
)
def test_both_edges_accept_the_same_values(field: str, values: list) -> None:
    """An HTTP value the gateway accepts is one the generator accepts, and the reverse:
    the two edges read one table (`services.common.generation.settings`)."""
    outcomes = {
        value: (
            _http_accepts({"prompt": "x", "width": 64, "height": 64, field: value}),
            _grpc_accepts({"prompt": "x", "width": 64, "height": 64, field: value}),
        )
        for value in values
    }
    assert all(http == grpc for http, grpc in outcomes.values()), outcomes
    assert {http for http, _ in outcomes.values()} == {True, False}  # the bound is in the list


def test_a_tile_overlap_of_zero_is_honoured() -> None:
    """0 is a meaningful overlap (tiles side by side), not "unset"."""
    body = {
        "mode": "upscale",
        "image": {"data": base64.b64encode(_png()).decode()},
        "upscale": {"tiled_refine": True, "tile_overlap": 0},
    }
    order = GenerationCreate.model_validate(body).to_order("alice", "r1", MAX_PIXELS)
    job = job_from_request(request_to_proto(order.request), MAX_PIXELS, _resolve)
    assert job.request.task.upscale.tile_overlap == 0  # type: ignore[union-attr]
    unset = generator_pb2.GenerateRequest(mode=generator_pb2.GENERATION_MODE_UPSCALE)
    unset.upscale.image.data = _png()
    default = job_from_request(unset, MAX_PIXELS, _resolve).request.task
    assert default.upscale.tile_overlap == 64  # type: ignore[union-attr]


def test_inpaint_takes_img2img_resize_modes_but_the_latent_one() -> None:
    """latent_upscale has no inpaint counterpart: refused by name, not silently ignored."""
    request = generator_pb2.GenerateRequest(mode=generator_pb2.GENERATION_MODE_INPAINT)
    request.img2img.init_image.data = _png()
    request.inpaint.mask.data = _png()
    request.img2img.resize_mode = generator_pb2.RESIZE_MODE_LATENT_UPSCALE
    with pytest.raises(InvalidArgument) as raised:
        job_from_request(request, MAX_PIXELS, _resolve)
    assert [v.field for v in raised.value.violations] == ["img2img.resize_mode"]
    request.img2img.resize_mode = generator_pb2.RESIZE_MODE_CROP_AND_RESIZE
    task = job_from_request(request, MAX_PIXELS, _resolve).request.task
    assert task.img2img.resize_mode == "crop_and_resize"  # type: ignore[union-attr]


def test_settings_round_trip_through_protobuf() -> None:
    settings = Settings(
        prompt="a hall",
        loras=[{"name": "oak", "weight": 0.7, "text_encoder_weight": 0.2, "short_hash": "ab" * 6}],
        schedule_type="Karras",
        width=640,
        seed=0,
        subseed_strength=0.1,
        eta=0.0,
        tiling=True,
        deep_cache_interval=3,
    )
    assert settings_from_proto(settings_to_proto(settings)) == settings
    request = GenerationRequest(settings=settings, task=Txt2Img(hires={"scale": 1.5}))
    assert request_from_proto(request_to_proto(request)) == request


def test_labelled_settings_are_written_and_read_back_from_the_infotext() -> None:
    """A setting with an infotext label needs no code in the infotext writer or reader."""
    settings = Settings(
        prompt="a hall", schedule_type="Karras", clip_skip=2, tiling=True, deep_cache_interval=3
    )
    values = labelled_values(settings)
    assert values == {
        "Schedule type": "Karras",
        "Clip skip": 2,
        "Tiling": True,
        "DeepCache interval": 3,
    }
    text = format_infotext("a hall", "", {"Steps": 20, "Sampler": "Euler a", **values})
    read = request_from_infotext(parse_infotext(text)).settings
    assert (read.schedule_type, read.clip_skip, read.tiling, read.deep_cache_interval) == (
        "Karras",
        2,
        True,
        3,
    )


def test_an_unknown_field_is_refused_not_dropped() -> None:
    with pytest.raises(ValueError, match="tilling"):
        GenerationCreate.model_validate({"prompt": "x", "tilling": True})
