""" "Use these parameters": a stored image's `params` make the same image again.

Over real HTTP against the real services: an image made with every kind of setting at once
is stored; `GET /v1/images/{id}` returns every one of them, and posting its `params` back to
`POST /v1/generations` gives the same pixels.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from diffusers import StableDiffusionPipeline
from PIL import Image

from services.common.infotext import parse_infotext
from services.generator.loras import make_kohya_lora
from services.generator.vaes import make_vae_file
from tests.stack_fixtures import RunningStack

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def http(running_stack: RunningStack) -> httpx.Client:
    with running_stack.http() as client:
        yield client


def _upload(http: httpx.Client, path: Path, name: str, kind: str) -> dict:
    response = http.post(
        "/v1/models",
        params={"name": name, "kind": kind, "format": "safetensors", "overwrite": True},
        content=path.read_bytes(),
        headers={"content-type": "application/octet-stream"},
    )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def models(http: httpx.Client, tiny_model_files, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two LoRAs and a VAE, uploaded through the gateway."""
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model_files.diffusers_dir, local_files_only=True
    )
    folder = tmp_path_factory.mktemp("remix-models")
    return {
        "remix-oak": _upload(
            http, make_kohya_lora(pipe, folder / "oak.safetensors", seed=21), "remix-oak", "lora"
        ),
        "remix-dusk": _upload(
            http, make_kohya_lora(pipe, folder / "dusk.safetensors", seed=22), "remix-dusk", "lora"
        ),
        "remix-vae": _upload(
            http, make_vae_file(pipe.vae, folder / "vae.safetensors", seed=23), "remix-vae", "vae"
        ),
    }


EVERYTHING = {
    "prompt": "a reading nook, warm light <lora:remix-dusk:0.5:0.9>",
    "negative_prompt": "blurry",
    "vae": "remix-vae",
    "loras": [{"name": "remix-oak", "weight": 0.7, "text_encoder_weight": 0.3}],
    "sampler": "Euler a",
    "schedule_type": "Karras",
    "steps": 4,
    "cfg_scale": 6.5,
    "width": 64,
    "height": 64,
    "seed": 1234,
    "subseed": 99,
    "subseed_strength": 0.3,
    "clip_skip": 2,
    "eta": 0.6,
    "tiling": True,
    "deep_cache_interval": 2,
    "eta_noise_seed_delta": 31337,
    "hires": {
        "scale": 1.5,
        "upscaler": "Latent",
        "second_pass_steps": 2,
        "denoising_strength": 0.6,
    },
}


def _pixels(http: httpx.Client, image: dict) -> np.ndarray:
    data = http.get(image["url"]).content
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _generate(http: httpx.Client, body: dict) -> dict:
    response = http.post("/v1/generations", json=body)
    assert response.status_code == 200, response.text
    (image,) = response.json()["images"]
    return image


def test_an_image_with_every_setting_is_made_again_from_its_params(
    http: httpx.Client, models: dict
) -> None:
    made = _generate(http, EVERYTHING)
    stored = http.get(f"/v1/images/{made['id']}").json()
    params = stored["params"]

    assert params["mode"] == "txt2img" and params["hires"] == {
        **params["hires"],
        **EVERYTHING["hires"],
    }
    for name in ("negative_prompt", "vae", "sampler", "schedule_type", "steps", "cfg_scale"):
        assert params[name] == EVERYTHING[name], name
    for name in ("width", "height", "seed", "subseed", "clip_skip", "tiling"):
        assert params[name] == EVERYTHING[name], name
    assert params["deep_cache_interval"] == 2 and params["eta_noise_seed_delta"] == 31337
    assert parse_infotext(stored["infotext"]).params["ENSD"] == "31337"
    assert params["subseed_strength"] == pytest.approx(0.3)
    assert params["eta"] == pytest.approx(0.6)
    loras = {lora["name"]: lora for lora in params["loras"]}
    assert (loras["remix-dusk"]["weight"], loras["remix-dusk"]["text_encoder_weight"]) == (
        pytest.approx(0.9),
        pytest.approx(0.5),
    )
    assert (loras["remix-oak"]["weight"], loras["remix-oak"]["text_encoder_weight"]) == (
        pytest.approx(0.7),
        pytest.approx(0.3),
    )
    # The hashes recorded are the ones the infotext carries (A1111's LoRA hashes).
    written = parse_infotext(stored["infotext"]).params["Lora hashes"]
    for name, lora in loras.items():
        assert f"{name}: {lora['short_hash']}" in written
        assert lora["short_hash"] == models[name]["short_hash"]
    assert {lora["hash"] for lora in stored["loras"]} == {
        models["remix-oak"]["short_hash"],
        models["remix-dusk"]["short_hash"],
    }

    again = _generate(http, params)
    assert again["id"] != made["id"]
    assert np.array_equal(_pixels(http, again), _pixels(http, made))
    assert http.get(f"/v1/images/{again['id']}").json()["params"] == params


def test_an_img2img_is_made_again_from_its_params(http: httpx.Client) -> None:
    """Its source travels as the parent's gallery id."""
    source = _generate(http, {"prompt": "a stone wall", "seed": 5, "width": 64, "height": 64})
    body = {
        "mode": "img2img",
        "prompt": "a stone wall, moss",
        "seed": 6,
        "steps": 3,
        "image": {"image_id": source["id"]},
        "img2img": {"denoising_strength": 0.55, "resize_mode": "crop_and_resize"},
    }
    made = _generate(http, body)
    params = http.get(f"/v1/images/{made['id']}").json()["params"]
    assert params["image"] == {"image_id": source["id"], "data": None}
    assert params["img2img"]["resize_mode"] == "crop_and_resize"
    again = _generate(http, params)
    assert again["parent_image_id"] == source["id"]
    assert np.array_equal(_pixels(http, again), _pixels(http, made))
