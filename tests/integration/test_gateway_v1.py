"""The REST API under /v1 over real HTTP against the real services: every generation mode,
Server-Sent Events, cancel, models, LoRAs, samplers, upscalers, styles and the docs page."""

from __future__ import annotations

import base64
import hashlib
import io
import re
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from diffusers import StableDiffusionPipeline
from PIL import Image

from services.common.infotext import parse_infotext
from services.generator.loras import make_kohya_lora
from services.generator.upscalers import make_esrgan_file
from tests.stack_fixtures import RunningStack, server_sent_events

pytestmark = [pytest.mark.integration]

BASE = {"prompt": "a timber pavilion", "seed": 11, "width": 64, "height": 64, "steps": 3}


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def http(running_stack: RunningStack) -> httpx.Client:
    with running_stack.http() as client:
        yield client


def _generate(http: httpx.Client, **fields: object) -> dict:
    response = http.post("/v1/generations", json={**BASE, **fields})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def source(http: httpx.Client) -> dict:
    """A stored txt2img picture the other modes start from."""
    (image,) = _generate(http)["images"]
    return image


@pytest.mark.parametrize(
    ("mode", "options", "size"),
    [
        ("img2img", {"img2img": {"denoising_strength": 0.6}}, 64),
        ("variation", {"variation": {"strength": "strong"}}, 64),
        ("upscale", {"upscale": {"upscaler": "Lanczos", "scale": 2}}, 128),
    ],
)
def test_modes_from_a_gallery_image_record_their_parent(
    http: httpx.Client, source: dict, mode: str, options: dict, size: int
) -> None:
    fields = {"mode": mode, "image": {"image_id": source["id"]}, **options}
    fields |= {"width": None, "height": None}  # the source's size
    (image,) = _generate(http, **fields)["images"]
    assert image["parent_image_id"] == source["id"]
    assert (image["width"], image["height"]) == (size, size)
    made = http.get(image["url"]).content
    original = http.get(source["url"]).content
    if size == 64:
        assert np.abs(_pixels(made) - _pixels(original)).mean() > 1, "the picture did not change"


def test_tiling_and_deep_cache_are_kept_with_the_stored_image(http: httpx.Client) -> None:
    """Both come back with the image, so "use these parameters" makes it again."""
    (image,) = _generate(http, tiling=True, deep_cache_interval=2)["images"]
    assert "Tiling: True" in image["infotext"] and "DeepCache interval: 2" in image["infotext"]
    again = http.get(f"/v1/images/{image['id']}").json()
    assert again["params"]["tiling"] is True and again["params"]["deep_cache_interval"] == 2


def test_inpaint_with_inline_images_keeps_what_the_mask_keeps(
    http: httpx.Client, source: dict
) -> None:
    original = http.get(source["url"]).content
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # repaint the left half only
    (image,) = _generate(
        http,
        mode="inpaint",
        image={"data": _b64(original)},
        mask={"data": _b64(_png(mask))},
        inpaint={"mask_blur": 0, "fill": "latent_noise"},
        img2img={"denoising_strength": 1.0},
    )["images"]
    assert image["parent_image_id"] is None  # inline bytes have no gallery parent
    before, after = _pixels(original), _pixels(http.get(image["url"]).content)
    assert np.abs(before[:, 40:] - after[:, 40:]).max() <= 2, "the kept half changed"
    assert np.abs(before[:, :24] - after[:, :24]).mean() > 5, "the masked half did not change"


def test_hires_fix_makes_a_larger_picture(http: httpx.Client) -> None:
    (image,) = _generate(http, steps=2, hires={"scale": 2, "second_pass_steps": 2})["images"]
    assert (image["width"], image["height"]) == (128, 128)
    assert "Hires upscale: 2" in image["infotext"]


def _stream(http: httpx.Client, body: dict) -> list[tuple[str, dict]]:
    with http.stream("POST", "/v1/generations", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(server_sent_events(response.iter_lines()))


def test_stream_sends_progress_with_previews_before_the_stored_images(
    http: httpx.Client,
) -> None:
    body = {**BASE, "steps": 4, "stream": True, "preview": {"every_n_steps": 1}}
    events = _stream(http, body)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "queued" and kinds[-1] == "result"
    progress = [data for kind, data in events if kind == "progress"]
    assert [p["step"] for p in progress] == [1, 2, 3, 4]
    assert progress[-1]["progress"] == pytest.approx(1.0)
    header, _, encoded = progress[0]["preview"].partition(",")
    assert header == "data:image/jpeg;base64"
    assert Image.open(io.BytesIO(base64.b64decode(encoded))).format == "JPEG"
    (image,) = events[-1][1]["images"]
    assert http.get(image["url"]).status_code == 200


def test_events_of_a_finished_generation_are_replayed(http: httpx.Client) -> None:
    response = http.post("/v1/generations", json=BASE, headers={"x-request-id": "replay-me"})
    assert response.status_code == 200
    with http.stream("GET", "/v1/generations/replay-me/events") as events:
        replayed = list(server_sent_events(events.iter_lines()))
    assert [kind for kind, _ in replayed][-1] == "result"
    assert replayed[-1][1]["images"] == response.json()["images"]
    missing = http.get("/v1/generations/never-ran/events")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "NOT_FOUND"


def test_cancel_stops_a_running_generation(http: httpx.Client) -> None:
    body = {**BASE, "width": 256, "height": 256, "steps": 150, "stream": True}
    events: list[tuple[str, dict]] = []
    started = threading.Event()

    def follow() -> None:
        with http.stream(
            "POST", "/v1/generations", json=body, headers={"x-request-id": "cancel-me"}
        ) as response:
            for event in server_sent_events(response.iter_lines()):
                events.append(event)
                if event[0] == "progress":
                    started.set()

    follower = threading.Thread(target=follow)
    follower.start()
    assert started.wait(120), "the job never started"
    cancelled_at = time.monotonic()
    reply = http.post("/v1/generations/cancel-me/cancel")
    assert reply.json() == {"request_id": "cancel-me", "cancelled": True}
    follower.join(60)
    assert time.monotonic() - cancelled_at < 30
    kind, data = events[-1]
    assert kind == "error"
    assert data["error"]["code"] == "CANCELLED"
    steps = [d["step"] for k, d in events if k == "progress"]
    assert max(steps) < 150
    again = http.post("/v1/generations/cancel-me/cancel")
    assert again.json()["cancelled"] is False


@pytest.fixture(scope="module")
def lora_file(tiny_model_files, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model_files.diffusers_dir, local_files_only=True
    )
    folder = tmp_path_factory.mktemp("gateway-lora")
    return make_kohya_lora(pipe, folder / "gw.safetensors", seed=5, scale=2.0)


@pytest.fixture(scope="module")
def uploaded_lora(http: httpx.Client, lora_file: Path) -> dict:
    response = http.post(
        "/v1/models",
        params={"name": "gw-oak", "kind": "lora", "format": "safetensors", "overwrite": True},
        content=lora_file.read_bytes(),
        headers={"content-type": "application/octet-stream"},
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_a_model_upload_is_listed_and_used(
    http: httpx.Client, uploaded_lora: dict, lora_file: Path
) -> None:
    assert uploaded_lora["sha256"] == hashlib.sha256(lora_file.read_bytes()).hexdigest()
    assert uploaded_lora["kind"] == "lora"
    models = http.get("/v1/models").json()
    assert models["default_checkpoint"] == "sdstack-tiny-demo"
    assert {"sdstack-tiny-demo", "gw-oak"} <= {m["name"] for m in models["models"]}
    only = http.get("/v1/models", params={"kind": "lora"}).json()["models"]
    assert {m["kind"] for m in only} == {"lora"}
    assert "gw-oak" in {lora["name"] for lora in http.get("/v1/loras").json()}
    (image,) = _generate(http, loras=[{"name": "gw-oak", "weight": 0.8}])["images"]
    assert "gw-oak" in parse_infotext(image["infotext"]).params["Lora hashes"]


def test_an_upload_answers_the_metadata_its_listing_shows(
    http: httpx.Client, uploaded_lora: dict
) -> None:
    (listed,) = [lora for lora in http.get("/v1/loras").json() if lora["name"] == "gw-oak"]
    assert listed["metadata"]["ss_network_module"] == "networks.lora"
    assert uploaded_lora["metadata"] == listed["metadata"]


def test_a_bad_upload_is_refused_and_not_stored(http: httpx.Client) -> None:
    response = http.post(
        "/v1/models",
        params={"name": "broken", "kind": "lora", "format": "safetensors"},
        content=b"not a safetensors file at all",
    )
    assert response.status_code == 400, response.text
    assert "broken" not in {lora["name"] for lora in http.get("/v1/loras").json()}
    bad_name = http.post(
        "/v1/models", params={"name": "../x", "kind": "lora", "format": "safetensors"}, content=b"x"
    )
    assert bad_name.status_code == 422
    assert bad_name.json()["error"]["details"][0]["field"] == "name"


def test_style_presets_are_stored_listed_and_applied(
    http: httpx.Client, uploaded_lora: dict
) -> None:
    preview = _png(Image.new("RGB", (32, 32), (200, 120, 40)))
    style = {
        "title": "Architecture",
        "category": "architecture",
        "lora": "gw-oak",
        "weight": 0.7,
        "trigger_words": ["archviz"],
        "prompt_template": "{prompt}, architectural photograph",
        "negative_prompt": "blurry",
        "preview": _b64(preview),
    }
    put = http.put("/v1/styles/gw-architecture", json=style)
    assert put.status_code == 200, put.text
    listed = {s["name"]: s for s in http.get("/v1/styles").json()}
    assert listed["gw-architecture"]["preview_url"] == "/v1/styles/gw-architecture/preview"
    assert listed["gw-architecture"]["weight"] == pytest.approx(0.7)
    picture = http.get("/v1/styles/gw-architecture/preview")
    assert picture.content == preview and picture.headers["content-type"] == "image/png"
    (image,) = _generate(http, styles=["gw-architecture"])["images"]
    parsed = parse_infotext(image["infotext"])
    assert parsed.prompt == "a timber pavilion, architectural photograph, archviz"
    assert parsed.negative_prompt == "blurry"
    assert "gw-oak" in parsed.params["Lora hashes"]
    assert http.delete("/v1/styles/gw-architecture").status_code == 204
    assert http.get("/v1/styles/gw-architecture").status_code == 404


@pytest.mark.parametrize(
    ("style", "status", "field"),
    [
        ({"lora": "no-such-lora"}, 404, None),
        ({"preview": _b64(b"\x89PNG\r\n\x1a\nbroken")}, 400, "style.preview"),
        ({"weight": 9}, 422, "weight"),
    ],
)
def test_bad_styles_are_refused(
    http: httpx.Client, style: dict, status: int, field: str | None
) -> None:
    response = http.put("/v1/styles/gw-bad", json=style)
    assert response.status_code == status, response.text
    if field:
        assert field in {d["field"] for d in response.json()["error"]["details"]}
    assert "gw-bad" not in {s["name"] for s in http.get("/v1/styles").json()}


def test_samplers_and_upscalers_are_listed(http: httpx.Client) -> None:
    samplers = {s["name"]: s for s in http.get("/v1/samplers").json()}
    assert {"Euler a", "DPM++ 2M Karras", "DDIM"} <= set(samplers)
    assert samplers["Euler a"]["options"]["scheduler"] == "EulerAncestralDiscreteScheduler"
    names = {u["name"] for u in http.get("/v1/upscalers").json()}
    assert {"Lanczos", "Latent"} <= names


def test_upscalers_are_listed_with_their_native_scale(http: httpx.Client, tmp_path: Path) -> None:
    """Read from the file's shapes: old-layout `.pth` and Real-ESRGAN-layout safetensors."""
    files = {
        "gw-esrgan-4x": make_esrgan_file(tmp_path / "4x.pth", layout="old", scale=4),
        "gw-esrgan-2x": make_esrgan_file(tmp_path / "2x.safetensors", layout="new", scale=2),
    }
    for name, path in files.items():
        response = http.post(
            "/v1/models",
            params={
                "name": name,
                "kind": "upscaler",
                "format": path.suffix.lstrip("."),
                "overwrite": True,
            },
            content=path.read_bytes(),
        )
        assert response.status_code == 201, response.text
    wanted = {"Lanczos": None, "gw-esrgan-4x": 4, "gw-esrgan-2x": 2}
    for listing in ("/v1/upscalers", "/sdapi/v1/upscalers"):
        scales = {u["name"]: u["scale"] for u in http.get(listing).json()}
        assert {name: scales.get(name, "absent") for name in wanted} == wanted, listing


def test_docs_page_needs_nothing_from_outside(http: httpx.Client) -> None:
    page = http.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
    assert assets and all(a.startswith("/") for a in assets), assets
    for asset in assets:
        fetched = http.get(asset)
        assert fetched.status_code == 200, asset
    script = next(a for a in assets if a.endswith(".js"))
    assert len(http.get(script).content) > 100_000
    assert "/openapi.json" in page.text


TRUNCATED_PNG = _png(Image.new("RGB", (64, 64), (10, 20, 30)))[:60]


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"mode": "img2img"}, 400, "image"),
        ({"mask": {"data": _b64(TRUNCATED_PNG)}}, 400, "mask"),
        ({"mode": "upscale", "image": {"data": "%%%"}}, 400, "image.data"),
        ({"mode": "img2img", "image": {"data": _b64(TRUNCATED_PNG)}}, 400, "image.data"),
        ({"mode": "img2img", "image": {"data": "aGk=", "image_id": "0" * 32}}, 422, "image"),
        ({"mode": "img2img", "image": {"image_id": "../../etc"}}, 422, "image.image_id"),
        (
            {"hires": {"scale": 2}, "mode": "variation", "image": {"image_id": "0" * 32}},
            400,
            "hires",
        ),
        ({"unknown_field": 1}, 422, "unknown_field"),
        ({"loras": [{"name": "a/b"}]}, 422, "loras.0.name"),
        ({"styles": ["x"] * 9}, 422, "styles"),
        ({"deep_cache_interval": 11}, 422, "deep_cache_interval"),
        ({"preview": {"method": "Approx NN"}}, 422, "preview.method"),
    ],
)
def test_bad_bodies_name_the_field(
    http: httpx.Client, change: dict, status: int, field: str
) -> None:
    response = http.post("/v1/generations", json={**BASE, **change})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert field in {d["field"] for d in error["details"]}, error


def test_not_json_is_a_clear_error(http: httpx.Client) -> None:
    response = http.post(
        "/v1/generations",
        content=b'{"cfg_scale": NaN',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "INVALID_ARGUMENT"


def test_another_gallery_id_is_not_found(http: httpx.Client) -> None:
    response = http.post(
        "/v1/generations", json={**BASE, "mode": "img2img", "image": {"image_id": "f" * 32}}
    )
    assert response.status_code == 404
    assert "f" * 32 in response.json()["error"]["message"]
