"""The AUTOMATIC1111-compatible API over real HTTP against the real services: what an A1111
client sends (with all its extra fields) and the shapes it reads back."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy
from PIL import Image

from tests.stack_fixtures import RunningStack

pytestmark = [pytest.mark.integration]

TXT2IMG = {
    "prompt": "a glass house in a forest",
    "negative_prompt": "fog",
    "seed": 21,
    "steps": 3,
    "width": 64,
    "height": 64,
    "batch_size": 2,
    # what A1111 clients commonly send along, accepted and ignored:
    "restore_faces": False,
    "alwayson_scripts": {},
    "script_args": [],
    "sampler_name": None,
    "do_not_save_grid": True,
    "some_future_field": {"x": 1},
}


@pytest.fixture(scope="module")
def http(running_stack: RunningStack) -> Iterator[httpx.Client]:
    with running_stack.http() as client:
        yield client


def _decode(encoded: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(encoded)))


def _stored(running_stack: RunningStack, request_id: str) -> int:
    database = sqlalchemy.create_engine(running_stack.settings.resolved_database_url)
    with database.connect() as connection:
        count = connection.execute(
            sqlalchemy.text("SELECT count(*) FROM images WHERE request_id = :id"),
            {"id": request_id},
        ).scalar_one()
    database.dispose()
    return count


@pytest.fixture(scope="module")
def txt2img(http: httpx.Client) -> dict:
    response = http.post("/sdapi/v1/txt2img", json={**TXT2IMG, "force_task_id": "a1111-t2i"})
    assert response.status_code == 200, response.text
    return response.json()


def test_txt2img_answers_in_a1111_shape(txt2img: dict) -> None:
    assert set(txt2img) == {"images", "parameters", "info"}
    images = [_decode(image) for image in txt2img["images"]]
    assert [image.size for image in images] == [(64, 64), (64, 64)]
    assert (
        images[0].info["parameters"].startswith("a glass house in a forest\nNegative prompt: fog")
    )
    assert txt2img["parameters"]["steps"] == 3
    assert txt2img["parameters"]["sampler_index"] == "Euler"  # A1111's default
    info = json.loads(txt2img["info"])
    assert info["all_seeds"] == [21, 22] and info["seed"] == 21
    assert info["prompt"] == "a glass house in a forest"
    assert info["all_prompts"] == [info["prompt"]] * 2
    assert info["negative_prompt"] == "fog"
    assert info["sampler_name"] == "Euler"
    assert info["sd_model_name"] == "sdstack-tiny-demo"
    assert len(info["sd_model_hash"]) == 10
    assert len(info["infotexts"]) == 2 and "Seed: 22" in info["infotexts"][1]
    assert (info["width"], info["height"], info["steps"]) == (64, 64, 3)


def test_images_are_saved_to_the_gallery_unless_told_not_to(
    running_stack: RunningStack, http: httpx.Client, txt2img: dict
) -> None:
    assert _stored(running_stack, "a1111-t2i") == 2
    body = {**TXT2IMG, "batch_size": 1, "save_images": False, "force_task_id": "a1111-nosave"}
    response = http.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200
    assert len(response.json()["images"]) == 1
    assert _stored(running_stack, "a1111-nosave") == 0
    quiet = http.post("/sdapi/v1/txt2img", json={**TXT2IMG, "send_images": False})
    assert quiet.json()["images"] == []


def test_tiling_is_written_in_the_infotext(http: httpx.Client) -> None:
    body = {**TXT2IMG, "batch_size": 1, "tiling": True, "save_images": False}
    response = http.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    assert "Tiling: True" in json.loads(response.json()["info"])["infotexts"][0]


def test_a1111_latent_upscale_modes_are_listed_and_used_by_name(http: httpx.Client) -> None:
    """A1111 lists its latent hi-res upscalers by name; each listed one is accepted."""
    modes = [mode["name"] for mode in http.get("/sdapi/v1/latent-upscale-modes").json()]
    assert {"Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (nearest)"} <= set(modes)
    body = {**TXT2IMG, "batch_size": 1, "enable_hr": True, "hr_scale": 1.5}
    response = http.post("/sdapi/v1/txt2img", json={**body, "hr_upscaler": "Latent (bicubic)"})
    assert response.status_code == 200, response.text
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    assert "Hires upscaler: Latent (bicubic)" in infotext
    assert _decode(response.json()["images"][0]).size == (96, 96)


def test_img2img_with_a_mask_inpaints(http: httpx.Client, txt2img: dict) -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    out = io.BytesIO()
    mask.save(out, format="PNG")
    body = {
        "init_images": [txt2img["images"][0]],
        "mask": "data:image/png;base64," + base64.b64encode(out.getvalue()).decode(),
        "prompt": "a red door",
        "steps": 3,
        "width": 64,
        "height": 64,
        "denoising_strength": 0.9,
        "mask_blur": 2,
        "inpainting_fill": 1,
        "inpaint_full_res": False,
        "inpaint_full_res_padding": 8,
        "inpainting_mask_invert": 0,
        "resize_mode": 1,
        "include_init_images": True,
        "image_cfg_scale": 1.5,
    }
    response = http.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert len(result["images"]) == 2  # the result, then the init image (include_init_images)
    assert result["images"][1] == txt2img["images"][0]
    assert result["parameters"]["init_images"] is None and result["parameters"]["mask"] is None
    infotext = json.loads(result["info"])["infotexts"][0]
    assert "Denoising strength: 0.9" in infotext and "Mask blur: 2" in infotext


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/sdapi/v1/img2img", {"prompt": "x"}, "init_images"),
        ("/sdapi/v1/img2img", {"init_images": ["bm90IGFuIGltYWdl"]}, "init_images[0]"),
        ("/sdapi/v1/img2img", {"init_images": ["aGk="], "inpainting_fill": 7}, "inpainting_fill"),
        ("/sdapi/v1/txt2img", {"steps": "many"}, "steps"),
        ("/sdapi/v1/txt2img", {"width": 500}, "width"),
        ("/sdapi/v1/txt2img", {"cfg_scale": 1e9}, "cfg_scale"),
        ("/sdapi/v1/txt2img", {"scheduler": "polyexponential"}, "scheduler"),
        ("/sdapi/v1/txt2img", {"sampler_name": "Nope"}, "params.sampler"),
        ("/sdapi/v1/txt2img", {"override_settings": {"CLIP_stop_at_last_layers": 99}}, None),
    ],
)
def test_typed_fields_are_validated(
    http: httpx.Client, path: str, body: dict, field: str | None
) -> None:
    response = http.post(path, json=body)
    assert response.status_code in (400, 422), response.text
    error = response.json()["error"]
    if field is not None:
        assert field in {d["field"] for d in error["details"]}, error


def test_an_unknown_checkpoint_is_model_not_found(http: httpx.Client) -> None:
    body = {**TXT2IMG, "override_settings": {"sd_model_checkpoint": "v1-5-missing"}}
    response = http.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 404
    assert "Model not found" in response.json()["error"]["message"]


@pytest.fixture
def previews_every_step(http: httpx.Client) -> Iterator[None]:
    """Full previews (the VAE's decode, full size) at every step."""
    options = {"show_progress_every_n_steps": 1, "show_progress_type": "Full"}
    assert http.post("/sdapi/v1/options", json=options).status_code == 200
    assert http.get("/sdapi/v1/options").json()["show_progress_type"] == "Full"
    yield
    options = {"show_progress_every_n_steps": 10, "show_progress_type": "Approx cheap"}
    http.post("/sdapi/v1/options", json=options)


@pytest.mark.usefixtures("previews_every_step")
@pytest.mark.parametrize("stop", ["interrupt", "skip"])
def test_progress_shows_the_running_job_until_it_is_stopped(
    running_stack: RunningStack, stop: str
) -> None:
    long_job = {"prompt": "x", "steps": 150, "width": 256, "height": 256, "save_images": False}
    answers: list[httpx.Response] = []
    with running_stack.http() as runner, running_stack.http() as poller:
        worker = threading.Thread(
            target=lambda: answers.append(runner.post("/sdapi/v1/txt2img", json=long_job))
        )
        worker.start()
        progress = _poll_until_preview(poller)
        assert 0 < progress["progress"] < 1
        assert progress["state"]["sampling_steps"] == 150
        assert progress["state"]["sampling_step"] >= 1
        assert progress["eta_relative"] > 0
        preview = _decode(progress["current_image"])
        assert preview.size == (256, 256)  # Full: the picture's size, not the latents' 32
        assert (
            poller.get("/sdapi/v1/progress?skip_current_image=true").json()["current_image"] is None
        )
        assert poller.post(f"/sdapi/v1/{stop}").status_code == 200
        worker.join(60)
        assert answers[0].status_code == 200
        assert answers[0].json()["images"] == []
        idle = poller.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["current_image"] is None
    assert idle["state"]["job_count"] == 0


def _poll_until_preview(http: httpx.Client) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        progress = http.get("/sdapi/v1/progress").json()
        if progress["current_image"]:
            return progress
        time.sleep(0.1)
    raise AssertionError("no progress with a preview")


def test_options_choose_checkpoint_and_clip_skip(http: httpx.Client) -> None:
    options = http.get("/sdapi/v1/options").json()
    title = options["sd_model_checkpoint"]
    assert title.startswith("sdstack-tiny-demo.safetensors [")
    assert options["sd_vae"] == "Automatic"
    missing = http.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope"})
    assert missing.status_code == 404
    change = {"sd_model_checkpoint": title, "CLIP_stop_at_last_layers": 2, "unknown_option": 1}
    assert http.post("/sdapi/v1/options", json=change).status_code == 200
    try:
        assert http.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
        response = http.post("/sdapi/v1/txt2img", json={**TXT2IMG, "batch_size": 1})
        assert "Clip skip: 2" in json.loads(response.json()["info"])["infotexts"][0]
        overridden = http.post(
            "/sdapi/v1/txt2img",
            json={**TXT2IMG, "batch_size": 1, "override_settings": {"CLIP_stop_at_last_layers": 1}},
        )
        assert "Clip skip" not in json.loads(overridden.json()["info"])["infotexts"][0]
    finally:
        http.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1})
    bad = http.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": "two"})
    assert bad.status_code == 400
    unknown = http.post("/sdapi/v1/options", json={"show_progress_type": "Approx NN"})
    assert unknown.status_code == 400 and "show_progress_type" in unknown.text


def test_png_info_reads_the_parameters(http: httpx.Client, txt2img: dict) -> None:
    response = http.post("/sdapi/v1/png-info", json={"image": txt2img["images"][0]})
    assert response.status_code == 200
    result = response.json()
    assert result["info"].startswith("a glass house in a forest")
    parameters = result["parameters"]
    assert parameters["Prompt"] == "a glass house in a forest"
    assert parameters["Negative prompt"] == "fog"
    assert (parameters["Steps"], parameters["Seed"]) == ("3", "21")
    assert (parameters["Size-1"], parameters["Size-2"]) == ("64", "64")
    assert http.post("/sdapi/v1/png-info", json={"image": ""}).json()["info"] == ""
    corrupt = http.post("/sdapi/v1/png-info", json={"image": txt2img["images"][0][:80]})
    assert corrupt.status_code == 400


def test_extra_single_image_upscales(http: httpx.Client, txt2img: dict) -> None:
    body = {"image": txt2img["images"][0], "upscaling_resize": 2, "upscaler_1": "Lanczos"}
    response = http.post("/sdapi/v1/extra-single-image", json=body)
    assert response.status_code == 200, response.text
    assert _decode(response.json()["image"]).size == (128, 128)
    to_size = {**body, "resize_mode": 1, "upscaling_resize_w": 192, "upscaling_resize_h": 192}
    sized = http.post("/sdapi/v1/extra-single-image", json=to_size)
    assert _decode(sized.json()["image"]).size == (192, 192)


def test_listings_have_a1111_shapes(http: httpx.Client) -> None:
    (model,) = [
        m for m in http.get("/sdapi/v1/sd-models").json() if m["model_name"] == "sdstack-tiny-demo"
    ]
    assert model["title"] == f"sdstack-tiny-demo.safetensors [{model['hash']}]"
    assert model["sha256"].startswith(model["hash"]) and len(model["hash"]) == 10
    assert set(model) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert isinstance(http.get("/sdapi/v1/sd-vae").json(), list)
    for lora in http.get("/sdapi/v1/loras").json():
        assert set(lora) == {"name", "alias", "path", "metadata"}
    samplers = http.get("/sdapi/v1/samplers").json()
    assert {"name", "aliases", "options"} == set(samplers[0])
    assert "Euler a" in {s["name"] for s in samplers}
    schedulers = {s["label"] for s in http.get("/sdapi/v1/schedulers").json()}
    assert {"Automatic", "Karras"} <= schedulers
    assert "Lanczos" in {u["name"] for u in http.get("/sdapi/v1/upscalers").json()}
    assert http.get("/sdapi/v1/cmd-flags").json()["api"] is True
    assert isinstance(http.get("/sdapi/v1/prompt-styles").json(), list)
    for refresh in ("refresh-checkpoints", "refresh-loras", "refresh-vae"):
        response = http.post(f"/sdapi/v1/{refresh}")
        assert response.status_code == 200 and response.json() is None


def test_scheduler_names_and_labels_are_accepted(http: httpx.Client) -> None:
    for name in ("karras", "Karras"):
        body = {**TXT2IMG, "batch_size": 1, "sampler_name": "DPM++ 2M", "scheduler": name}
        response = http.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        assert "Schedule type: Karras" in json.loads(response.json()["info"])["infotexts"][0]
