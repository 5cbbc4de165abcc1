"""The generator's edge validation: every broken rule names its field."""

from __future__ import annotations

import math

import pytest

from services.common.errors import InvalidArgument, Unimplemented
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2
from services.generator.jobs import MAX_SEED, job_from_request
from services.generator.samplers import SAMPLERS, resolve_sampler

MAX_PIXELS = 1024 * 1024


def _request(**params: object) -> generator_pb2.GenerateRequest:
    return generator_pb2.GenerateRequest(params=common_pb2.GenerationParams(**params))


def test_defaults_follow_a1111() -> None:
    job = job_from_request(_request(prompt="a house", seed=7), MAX_PIXELS)
    assert (job.width, job.height, job.steps, job.cfg_scale) == (512, 512, 20, 7.0)
    assert job.sampler == "Euler a"
    assert job.seeds() == [7]


def test_batch_seeds_are_consecutive() -> None:
    job = job_from_request(_request(seed=100, batch_size=4, n_iter=2), MAX_PIXELS)
    assert job.seeds() == list(range(100, 108))


@pytest.mark.parametrize("seed", [None, -1])
def test_random_seed_is_drawn_in_range(seed: int | None) -> None:
    request = _request() if seed is None else _request(seed=seed)
    seeds = {job_from_request(request, MAX_PIXELS).seed for _ in range(20)}
    assert all(0 <= s <= MAX_SEED for s in seeds)
    assert len(seeds) > 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"width": 513}, "params.width"),
        ({"height": 32}, "params.height"),
        ({"width": 2048, "height": 2048}, "params.width"),
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


def test_modes_not_built_yet_say_so() -> None:
    request = _request()
    request.mode = generator_pb2.GENERATION_MODE_INPAINT
    with pytest.raises(Unimplemented, match="INPAINT"):
        job_from_request(request, MAX_PIXELS)


def test_sampler_names_map_to_diffusers_schedulers() -> None:
    assert resolve_sampler("DPM++ 2M Karras").options == {"use_karras_sigmas": True}
    assert resolve_sampler("dpm++ 2m karras").name == "DPM++ 2M Karras"
    assert resolve_sampler("k_euler_a").scheduler.__name__ == "EulerAncestralDiscreteScheduler"
    assert resolve_sampler("DPM++ 2M SDE").options == {"algorithm_type": "sde-dpmsolver++"}
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "UniPC", "LMS", "Heun"} <= set(SAMPLERS)
