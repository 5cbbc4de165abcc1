"""API keys, HTTP basic on the A1111 API, owners kept apart, per-key rate limits and the
edge limits (pixel budget, body size): a gateway with keys beside the running stack."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy

from tests.stack_fixtures import ExtraProcess, RunningStack, start_gateway

pytestmark = [pytest.mark.integration]

ALICE, BOB, CAROL = "alice-key-0001", "bob-key-00002", "carol-key-0003"
SMALL = {"prompt": "a stone bridge", "seed": 3, "width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def gateway(
    running_stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExtraProcess]:
    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text(f"# team keys\n{CAROL}:carol\n")
    extra = start_gateway(
        running_stack,
        tmp_path_factory.mktemp("auth-gateway"),
        api_keys=f"{ALICE}:alice,{BOB}:bob",
        api_keys_file=keys_file,
        rate_limit_per_minute=600,
        rate_limit_burst=10,
        max_pixels=128 * 128,
        max_body_bytes=1024 * 1024,
    )
    try:
        yield extra
    finally:
        extra.stop()


def _as(gateway: ExtraProcess, key: str) -> httpx.Client:
    return gateway.http(authorization=f"Bearer {key}")


def _basic(user: str, key: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{key}".encode()).decode()
    return {"authorization": f"Basic {token}"}


def test_every_route_but_health_needs_a_key(gateway: ExtraProcess) -> None:
    with gateway.http() as anonymous:
        for method, path in [
            ("GET", "/v1/models"),
            ("POST", "/v1/generations"),
            ("GET", "/v1/styles"),
            ("GET", "/sdapi/v1/sd-models"),
            ("POST", "/sdapi/v1/txt2img"),
        ]:
            response = anonymous.request(method, path)
            assert response.status_code == 401, path
            assert response.json()["error"]["code"] == "UNAUTHENTICATED"
        assert anonymous.get("/sdapi/v1/options").headers["www-authenticate"].startswith("Basic")
        assert anonymous.get("/v1/loras").headers["www-authenticate"] == "Bearer"
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").status_code == 200
    with _as(gateway, "not-a-key-at-all") as stranger:
        assert stranger.get("/v1/models").status_code == 401


def test_bearer_keys_and_a1111_basic_auth(gateway: ExtraProcess) -> None:
    with _as(gateway, ALICE) as alice, _as(gateway, CAROL) as carol:
        assert alice.get("/v1/models").status_code == 200
        assert carol.get("/sdapi/v1/sd-models").status_code == 200  # from the keys file
    with gateway.http(**_basic("alice", ALICE)) as basic:
        assert basic.get("/sdapi/v1/sd-models").status_code == 200
        assert basic.get("/v1/models").status_code == 401  # basic is for the A1111 API only
    with gateway.http(**_basic("bob", ALICE)) as wrong_user:
        assert wrong_user.get("/sdapi/v1/sd-models").status_code == 401


def test_owners_never_see_each_others_images_or_jobs(
    running_stack: RunningStack, gateway: ExtraProcess
) -> None:
    with _as(gateway, ALICE) as alice, _as(gateway, BOB) as bob:
        made = alice.post("/v1/generations", json=SMALL, headers={"x-request-id": "alice-job"})
        assert made.status_code == 200, made.text
        (image,) = made.json()["images"]
        assert alice.get(f"/v1/images/{image['id']}").status_code == 200
        assert bob.get(f"/v1/images/{image['id']}").status_code == 404
        from_image = {**SMALL, "mode": "img2img", "image": {"image_id": image["id"]}}
        assert bob.post("/v1/generations", json=from_image).status_code == 404
        mine = alice.post("/v1/generations", json=from_image)
        assert mine.json()["images"][0]["parent_image_id"] == image["id"]
        assert bob.get("/v1/generations/alice-job/events").status_code == 404
        assert bob.post("/v1/generations/alice-job/cancel").json()["cancelled"] is False
        assert alice.get("/v1/generations/alice-job/events").status_code == 200
        a1111 = bob.post("/sdapi/v1/txt2img", json={**SMALL, "force_task_id": "bob-a1111"})
        assert a1111.status_code == 200
    database = sqlalchemy.create_engine(running_stack.settings.resolved_database_url)
    with database.connect() as connection:
        owners = connection.execute(
            sqlalchemy.text(
                "SELECT owner FROM images WHERE request_id IN ('alice-job', 'bob-a1111')"
            )
        ).scalars()
        assert sorted(owners) == ["alice", "bob"]
    database.dispose()


def test_a_key_over_its_rate_gets_429_with_retry_after(gateway: ExtraProcess) -> None:
    with _as(gateway, CAROL) as carol, _as(gateway, BOB) as bob:
        codes = [carol.get("/sdapi/v1/schedulers") for _ in range(40)]
        limited = [r for r in codes if r.status_code == 429]
        assert limited, "no request was limited"
        assert sum(r.status_code == 200 for r in codes) >= 10  # the burst went through
        assert int(limited[0].headers["retry-after"]) >= 1
        assert limited[0].json()["error"]["code"] == "RESOURCE_EXHAUSTED"
        assert bob.get("/sdapi/v1/schedulers").status_code == 200  # other keys are not


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/generations", {**SMALL, "width": 256, "height": 128}),
        ("/sdapi/v1/txt2img", {**SMALL, "width": 256, "height": 128}),
    ],
)
def test_the_pixel_budget_is_checked_at_the_edge(
    gateway: ExtraProcess, path: str, body: dict
) -> None:
    with _as(gateway, ALICE) as alice:
        response = alice.post(path, json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["details"] == [
        {"field": "height", "rule": "width×height must be at most 16384 pixels"}
    ]


def test_a_body_over_the_limit_is_refused(gateway: ExtraProcess) -> None:
    with _as(gateway, ALICE) as alice:
        response = alice.post("/v1/generations", json={**SMALL, "prompt": "x" * 2_000_000})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
