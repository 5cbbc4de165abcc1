"""One request across the whole system: gateway → generator → gallery → S3 and SQL.

Everything runs as real processes on free ports: the bundled S3 server, the three gRPC
services and the gateway, started by the same launcher as `sdstack up`.
"""

from __future__ import annotations

import io
import urllib.request

import numpy as np
import pytest
import sqlalchemy
from PIL import Image

from services.common.clients import GalleryClient, GeneratorClient, TrainerClient
from services.common.infotext import parse_infotext
from services.common.object_store import OUTPUTS_BUCKET
from tests.stack_fixtures import RunningStack

pytestmark = [pytest.mark.integration]

SKELETON_REQUEST = {
    "prompt": "a cosy reading nook, warm light",
    "seed": 1,
    "batch_size": 4,
    "width": 64,
    "height": 64,
    "steps": 4,
}


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.fixture(scope="module")
def first_generation(running_stack: RunningStack) -> dict:
    with running_stack.http() as http:
        response = http.post(
            "/v1/generations", json=SKELETON_REQUEST, headers={"x-request-id": "skeleton-1"}
        )
    assert response.status_code == 200, response.text
    return response.json()


def test_every_service_answers_health(running_stack: RunningStack) -> None:
    s = running_stack.settings
    for client_class in (GeneratorClient, TrainerClient, GalleryClient):
        service = client_class.SERVICE.split(".")[-1].lower()
        with client_class(s.target(service)) as client:
            assert client.is_serving(), f"{service} is not SERVING"
    with running_stack.http() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["backends"] == {
            "generator": "serving",
            "gallery": "serving",
            "trainer": "serving",
        }


def test_generation_returns_four_stored_images(
    running_stack: RunningStack,
    first_generation: dict,
) -> None:
    images = first_generation["images"]
    assert first_generation["request_id"] == "skeleton-1"
    assert [image["seed"] for image in images] == [1, 2, 3, 4]
    with running_stack.http() as http:
        pngs = []
        for image in images:
            response = http.get(image["url"])
            assert response.status_code == 200
            assert response.headers["content-type"] == "image/png"
            pngs.append(response.content)
    decoded = [Image.open(io.BytesIO(png)) for png in pngs]
    assert all(image.size == (64, 64) for image in decoded)
    pixels = [_pixels(png) for png in pngs]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(pixels[i], pixels[j]), f"images {i} and {j} are the same"


def test_png_carries_a1111_parameters(
    running_stack: RunningStack,
    first_generation: dict,
) -> None:
    image = first_generation["images"][0]
    with running_stack.http() as http:
        png = http.get(image["url"]).content
    text = Image.open(io.BytesIO(png)).info["parameters"]
    parsed = parse_infotext(text)
    assert parsed.prompt == SKELETON_REQUEST["prompt"]
    assert parsed.params["Steps"] == "4"
    assert parsed.params["Sampler"] == "Euler a"
    assert parsed.params["Seed"] == "1"
    assert parsed.params["Size"] == "64x64"
    assert parsed.params["Model"] == "sdstack-tiny-demo"
    assert len(parsed.params["Model hash"]) == 10


def test_same_seed_gives_identical_pixels(
    running_stack: RunningStack,
    first_generation: dict,
) -> None:
    with running_stack.http() as http:
        response = http.post("/v1/generations", json=SKELETON_REQUEST)
        assert response.status_code == 200, response.text
        again = [http.get(image["url"]).content for image in response.json()["images"]]
        first = [http.get(image["url"]).content for image in first_generation["images"]]
    for before, after in zip(first, again, strict=True):
        assert np.array_equal(_pixels(before), _pixels(after))


def test_a_seed_gives_the_same_image_whatever_the_batch(
    running_stack: RunningStack,
    first_generation: dict,
) -> None:
    """Image i of a batch uses seed + i; alone with that seed it is the same picture.

    CPU kernels may round differently for another batch size, so pixels may differ by
    one level of 255 at most in float32 (a few in bfloat16).
    """
    alone = {**SKELETON_REQUEST, "seed": 3, "batch_size": 1}
    with running_stack.http() as http:
        response = http.post("/v1/generations", json=alone)
        assert response.status_code == 200, response.text
        single = http.get(response.json()["images"][0]["url"]).content
        third = http.get(first_generation["images"][2]["url"]).content
    difference = np.abs(_pixels(single).astype(int) - _pixels(third).astype(int))
    assert difference.max() <= running_stack.rounding_levels(1)


def test_objects_and_records_are_stored(
    running_stack: RunningStack,
    first_generation: dict,
) -> None:
    store = running_stack.object_store()
    database = sqlalchemy.create_engine(running_stack.settings.resolved_database_url)
    for image in first_generation["images"]:
        info = store.stat(OUTPUTS_BUCKET, f"local/{image['id']}.png")
        assert info.sha256 == image["sha256"]
        assert store.exists(OUTPUTS_BUCKET, f"local/{image['id']}.thumb.webp")
        with database.connect() as connection:
            row = connection.execute(
                sqlalchemy.text("SELECT seed, request_id, object_key FROM images WHERE id = :id"),
                {"id": image["id"]},
            ).one()
        assert row.seed == image["seed"]
        assert row.request_id == "skeleton-1"
        assert row.object_key == f"local/{image['id']}.png"
    database.dispose()


def test_record_is_readable_through_the_gateway(
    running_stack: RunningStack,
    first_generation: dict,
) -> None:
    image = first_generation["images"][0]
    with running_stack.http() as http:
        record = http.get(f"/v1/images/{image['id']}").json()
        thumbnail = http.get(image["thumbnail_url"])
    assert record["prompt"] == SKELETON_REQUEST["prompt"]
    assert record["width"] == 64
    assert thumbnail.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(thumbnail.content)).format == "WEBP"


@pytest.mark.parametrize(
    ("change", "field", "status"),
    [
        ({"width": 65}, "width", 422),
        ({"steps": 0}, "steps", 422),
        ({"batch_size": 100}, "batch_size", 422),
        ({"prompt": "x" * 100_001}, "prompt", 422),
        ({"sampler": "Not A Sampler"}, "params.sampler", 400),
    ],
)
def test_bad_input_is_a_clear_error(
    running_stack: RunningStack,
    change: dict,
    field: str,
    status: int,
) -> None:
    with running_stack.http() as http:
        response = http.post("/v1/generations", json={**SKELETON_REQUEST, **change})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert field in error["message"]
    assert any(d["field"] == field for d in error["details"])


def test_unknown_model_and_image_are_404(running_stack: RunningStack) -> None:
    with running_stack.http() as http:
        model = http.post("/v1/generations", json={**SKELETON_REQUEST, "model": "nope"})
        image = http.get("/v1/images/0123456789abcdef0123456789abcdef/file")
    assert model.status_code == 404
    assert "nope" in model.json()["error"]["message"]
    assert image.status_code == 404
    assert image.json()["error"]["code"] == "NOT_FOUND"


def test_metrics_are_exported(running_stack: RunningStack, first_generation: dict) -> None:
    s = running_stack.settings
    with running_stack.http() as http:
        gateway_metrics = http.get("/metrics").text
    assert 'http_requests_total{method="POST",route="/v1/generations",status="200"}' in (
        gateway_metrics
    )
    generator = urllib.request.urlopen(f"http://{s.host}:{s.generator_metrics_port}/metrics")
    text = generator.read().decode()
    assert any(
        line.startswith("grpc_server_handled_total")
        and 'grpc_method="Generate"' in line
        and 'grpc_code="OK"' in line
        for line in text.splitlines()
    )
    assert "sdstack_images_generated_total" in text
    assert "sdstack_seconds_per_step_bucket" in text
    for port in (s.trainer_metrics_port, s.gallery_metrics_port):
        with urllib.request.urlopen(f"http://{s.host}:{port}/metrics") as response:
            assert b"grpc_server_started_total" in response.read()


def test_openapi_document_describes_the_routes(running_stack: RunningStack) -> None:
    with running_stack.http() as http:
        document = http.get("/openapi.json").json()
    assert {"/v1/generations", "/v1/images/{image_id}", "/v1/images/{image_id}/file"} <= set(
        document["paths"]
    )
    width = document["components"]["schemas"]["GenerationCreate"]["properties"]["width"]
    assert (width["minimum"], width["maximum"], width["multipleOf"]) == (64, 2048, 8)
