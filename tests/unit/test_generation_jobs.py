"""The generator's edge validation: every broken rule names its field."""

from __future__ import annotations

import io
import math

import pytest
from PIL import Image

from services.common.errors import InvalidArgument
from services.common.generation import MAX_SEED, Img2Img
from services.common.images import decode_image
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2
from services.generator.jobs import job_from_request
from services.generator.samplers import SAMPLERS, resolve_sampler

MAX_PIXELS = 1024 * 1024


def _request(**params: object) -> generator_pb2.GenerateRequest:
    return generator_pb2.GenerateRequest(params=common_pb2.GenerationParams(**params))


def test_defaults_follow_a1111() -> None:
    job = job_from_request(_request(prompt="a house", seed=7), MAX_PIXELS)
    params = job.settings
    assert (params.width, params.height, params.steps, params.cfg_scale) == (512, 512, 20, 7.0)
    assert params.sampler == "Euler a"
    assert job.seeds() == [7]


def test_batch_seeds_are_consecutive() -> None:
    job = job_from_request(_request(seed=100, batch_size=4, n_iter=2), MAX_PIXELS)
    assert job.seeds() == list(range(100, 108))


@pytest.mark.parametrize("seed", [None, -1])
def test_random_seed_is_drawn_in_range(seed: int | None) -> None:
    request = _request() if seed is None else _request(seed=seed)
    seeds = {job_from_request(request, MAX_PIXELS).settings.seed for _ in range(20)}
    assert all(0 <= s <= MAX_SEED for s in seeds)
    assert len(seeds) > 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"width": 513}, "params.width"),
        ({"height": 32}, "params.height"),
        ({"width": 2048, "height": 2048}, "params.height"),
        ({"steps": 151}, "params.steps"),
        ({"cfg_scale": math.nan}, "params.cfg_scale"),
        ({"cfg_scale": math.inf}, "params.cfg_scale"),
        ({"seed": -2}, "params.seed"),
        ({"batch_size": 9}, "params.batch_size"),
        ({"prompt": "x" * 100_000}, "params.prompt"),
        ({"sampler": "Euler z"}, "params.sampler"),
        ({"schedule_type": "Wobbly"}, "params.schedule_type"),
        ({"clip_skip": 13}, "params.clip_skip"),
    ],
)
def test_bad_params_name_the_field(params: dict, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        job_from_request(_request(**params), MAX_PIXELS)
    assert field in [v.field for v in raised.value.violations]


def test_all_violations_are_reported_together() -> None:
    with pytest.raises(InvalidArgument) as raised:
        job_from_request(_request(width=7, steps=0, batch_size=0, n_iter=99), MAX_PIXELS)
    fields = {v.field for v in raised.value.violations}
    assert {"params.width", "params.n_iter"} <= fields


def test_bad_request_id_is_refused() -> None:
    request = _request()
    request.request_id = "../../etc/passwd"
    with pytest.raises(InvalidArgument) as raised:
        job_from_request(request, MAX_PIXELS)
    assert raised.value.violations[0].field == "request_id"


def _png(size: tuple[int, int], color: str = "gray", mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format="PNG")
    return out.getvalue()


def _resolve(ref: common_pb2.ImageRef, field: str) -> Image.Image:
    return decode_image(ref.data, field, max_pixels=MAX_PIXELS * 4)


def test_img2img_defaults_to_the_source_size_rounded_to_8() -> None:
    request = _request(seed=1)
    request.mode = generator_pb2.GENERATION_MODE_IMG2IMG
    request.img2img.init_image.data = _png((203, 131))
    job = job_from_request(request, MAX_PIXELS, _resolve)
    assert (job.settings.width, job.settings.height) == (200, 128)
    assert isinstance(job.task, Img2Img) and job.task.img2img.denoising_strength == 0.75


@pytest.mark.parametrize(
    ("mode", "field"),
    [
        (generator_pb2.GENERATION_MODE_IMG2IMG, "img2img.init_image"),
        (generator_pb2.GENERATION_MODE_INPAINT, "inpaint.mask"),
        (generator_pb2.GENERATION_MODE_UPSCALE, "upscale.image"),
        (generator_pb2.GENERATION_MODE_VARIATION, "variation.source"),
    ],
)
def test_each_mode_names_its_missing_image(mode: int, field: str) -> None:
    request = _request()
    request.mode = mode
    with pytest.raises(InvalidArgument) as raised:
        job_from_request(request, MAX_PIXELS, _resolve)
    assert field in [v.field for v in raised.value.violations]


def test_corrupt_init_image_names_the_field() -> None:
    request = _request()
    request.mode = generator_pb2.GENERATION_MODE_IMG2IMG
    request.img2img.init_image.data = _png((64, 64))[:40]
    with pytest.raises(InvalidArgument) as raised:
        job_from_request(request, MAX_PIXELS, _resolve)
    assert raised.value.violations[0].field == "img2img.init_image"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"img2img": {"denoising_strength": 1.5}}, "img2img.denoising_strength"),
        ({"inpaint": {"mask_blur": 65}}, "inpaint.mask_blur"),
        ({"inpaint": {"mask_blur": 4, "mask_blur_y": -1}}, "inpaint.mask_blur_y"),
        ({"hires": {"enabled": True, "scale": 9}}, "hires.scale"),
        ({"hires": {"enabled": True, "scale": 1.5, "sampler": "nope"}}, "hires.sampler"),
    ],
)
def test_mode_options_are_checked(options: dict, field: str) -> None:
    request = generator_pb2.GenerateRequest(
        mode=generator_pb2.GENERATION_MODE_INPAINT,
        params=common_pb2.GenerationParams(seed=1),
        img2img={"init_image": {"data": _png((64, 64))}},
        inpaint={"mask": {"data": _png((64, 64), "white")}},
    )
    if "hires" in options:
        request = _request(seed=1)
    merged = generator_pb2.GenerateRequest(**options)
    request.MergeFrom(merged)
    with pytest.raises(InvalidArgument) as raised:
        job_from_request(request, MAX_PIXELS, _resolve)
    assert field in [v.field for v in raised.value.violations]


@pytest.mark.parametrize(
    ("mode", "options", "field"),
    [
        (
            generator_pb2.GENERATION_MODE_TXT2IMG,
            {"img2img": {"denoising_strength": 0.3}},
            "img2img",
        ),
        (generator_pb2.GENERATION_MODE_IMG2IMG, {"hires": {"enabled": True}}, "hires"),
        (generator_pb2.GENERATION_MODE_UPSCALE, {"inpaint": {"mask_blur": 8}}, "inpaint"),
    ],
)
def test_options_of_another_mode_are_refused_not_dropped(
    mode: int, options: dict, field: str
) -> None:
    """A setting the mode would not use is an error naming it, never silently ignored."""
    request = generator_pb2.GenerateRequest(mode=mode, **options)
    request.img2img.init_image.data = _png((64, 64))
    request.upscale.image.data = _png((64, 64))
    if mode == generator_pb2.GENERATION_MODE_TXT2IMG:
        request.ClearField("upscale")
    with pytest.raises(InvalidArgument) as raised:
        job_from_request(request, MAX_PIXELS, _resolve)
    assert field in [v.field for v in raised.value.violations]
    assert "is not used by mode" in raised.value.message


def test_prompt_lora_tags_become_loras() -> None:
    job = job_from_request(_request(prompt="a room <lora:oak:0.6>, warm"), MAX_PIXELS)
    assert [(lora.name, lora.weight) for lora in job.loras] == [("oak", 0.6)]
    assert "<lora" not in job.prompt
    assert job.settings.prompt == "a room <lora:oak:0.6>, warm"


def test_a_bad_lora_tag_names_the_prompt() -> None:
    with pytest.raises(InvalidArgument) as raised:
        job_from_request(_request(prompt="a room <lora:../secret:1>"), MAX_PIXELS)
    assert raised.value.violations[0].field == "params.prompt"


def test_hires_result_must_fit_the_pixel_budget() -> None:
    request = _request(width=1024, height=1024)
    request.hires.enabled = True
    request.hires.scale = 2
    with pytest.raises(InvalidArgument) as raised:
        job_from_request(request, MAX_PIXELS)
    assert raised.value.violations[0].field == "hires.scale"


def test_sampler_names_map_to_diffusers_schedulers() -> None:
    assert resolve_sampler("DPM++ 2M Karras").options == {"use_karras_sigmas": True}
    assert resolve_sampler("dpm++ 2m karras").name == "DPM++ 2M Karras"
    assert resolve_sampler("k_euler_a").scheduler.__name__ == "EulerAncestralDiscreteScheduler"
    assert resolve_sampler("DPM++ 2M SDE").options == {"algorithm_type": "sde-dpmsolver++"}
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "UniPC", "LMS", "Heun"} <= set(SAMPLERS)
