"""The gallery's REST API over real HTTP: the gateway (uvicorn, API keys for two users) in
front of the gallery gRPC service, the real local S3 and SQLite (the gRPC tests cover
PostgreSQL; this layer only translates)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from PIL import Image

from gateway.app import create_app
from gateway.backends import Backends
from sdstack.launcher import free_ports
from services.common.config import load_settings
from services.common.object_store import ObjectStore
from services.common.proto.sdstack.v1 import gallery_pb2
from tests.gallery_support import GalleryService, a1111_png, serve_gallery

pytestmark = pytest.mark.integration

ALICE_KEY, BOB_KEY = "alice-key-0001", "bob-key-0002"


@pytest.fixture(scope="module")
def service(
    object_store: ObjectStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GalleryService]:
    database = tmp_path_factory.mktemp("gallery-http") / "gallery.db"
    with serve_gallery(object_store, f"sqlite:///{database}") as running:
        yield running


@pytest.fixture(scope="module")
def base_url(service: GalleryService) -> Iterator[str]:
    port = free_ports(1)[0]
    settings = load_settings(
        gallery_target=service.target,
        gateway_port=port,
        api_keys=f"{ALICE_KEY}:alice,{BOB_KEY}:bob",
        rate_limit_per_minute=0,
    )
    backends = Backends.connect(settings)
    config = uvicorn.Config(create_app(backends, settings), host="127.0.0.1", port=port)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        backends.close()


@pytest.fixture
def alice(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {ALICE_KEY}"}) as c:
        yield c


@pytest.fixture
def bob(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {BOB_KEY}"}) as c:
        yield c


def store(service: GalleryService, owner: str, prompt: str, **fields: object) -> str:
    request = gallery_pb2.CreateImageRequest(owner=owner, png=a1111_png(prompt), **fields)
    return service.client.create_image(request).id


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [image["id"] for image in response.json()["images"]]


def test_list_filters_and_paginates(service: GalleryService, alice: httpx.Client) -> None:
    first = store(service, "alice", "a paper lantern festival", tags=["festival"])
    second = store(service, "alice", "a paper boat on a lantern lake")
    alice.patch(f"/v1/images/{second}", json={"favourite": True}).raise_for_status()

    page = alice.get("/v1/images", params={"q": "lantern", "limit": 1}).json()
    assert [i["id"] for i in page["images"]] == [second]
    rest = alice.get("/v1/images", params={"q": "lantern", "cursor": page["next_cursor"]}).json()
    assert ([i["id"] for i in rest["images"]], rest["next_cursor"]) == ([first], None)

    assert ids(alice.get("/v1/images", params={"q": "lantern", "favourite": "true"})) == [second]
    assert ids(alice.get("/v1/images", params={"q": "lantern", "favourite": "false"})) == [first]
    assert ids(alice.get("/v1/images", params={"tag": "festival"})) == [first]
    assert second in ids(alice.get("/v1/images", params={"model": "v1-5-pruned-emaonly"}))
    created = alice.get(f"/v1/images/{first}").json()["created_at"]
    window = {"q": "lantern", "created_after": created, "created_before": "2999-01-01T00:00:00Z"}
    assert ids(alice.get("/v1/images", params=window)) == [second, first]
    assert ids(alice.get("/v1/images", params={"q": "lantern", "created_before": created})) == []


def test_record_file_thumbnail_and_url(service: GalleryService, alice: httpx.Client) -> None:
    image_id = store(service, "alice", "a glass house", request_id="req-http")

    record = alice.get(f"/v1/images/{image_id}").json()
    assert (record["prompt"], record["request_id"], record["params"]["seed"]) == (
        "a glass house",
        "req-http",
        965400086,
    )
    assert record["params"]["prompt"] == "a glass house"
    png = alice.get(record["url"])
    assert (png.headers["content-type"], png.content) == ("image/png", a1111_png("a glass house"))
    thumb = alice.get(record["thumbnail_url"])
    assert Image.open(io.BytesIO(thumb.content)).format == "WEBP"
    direct = alice.get(f"/v1/images/{image_id}/url", params={"expires_in": 60}).json()
    assert httpx.get(direct["url"]).content == png.content


def test_patch_lineage_and_delete(service: GalleryService, alice: httpx.Client) -> None:
    board = alice.post("/v1/boards", json={"name": "Glass"}).json()
    parent = store(service, "alice", "a parent")
    child = store(service, "alice", "a child", parent_image_id=parent)

    patched = alice.patch(
        f"/v1/images/{child}",
        json={"favourite": True, "tags": ["glass", "night"], "board_ids": [board["id"]]},
    ).json()
    assert (patched["favourite"], patched["tags"], patched["board_ids"]) == (
        True,
        ["glass", "night"],
        [board["id"]],
    )
    assert ids(alice.get("/v1/images", params={"board_id": board["id"]})) == [child]
    lineage = alice.get(f"/v1/images/{child}/lineage").json()
    assert [i["id"] for i in lineage["ancestors"]] == [parent]
    assert [i["id"] for i in alice.get(f"/v1/images/{parent}/lineage").json()["descendants"]] == [
        child
    ]

    assert alice.delete(f"/v1/images/{parent}").status_code == 204
    assert alice.get(f"/v1/images/{parent}").status_code == 404
    assert alice.get(f"/v1/images/{child}").json()["parent_image_id"] is None


def test_boards_crud(alice: httpx.Client, bob: httpx.Client) -> None:
    created = alice.post("/v1/boards", json={"name": "Towers"})
    assert created.status_code == 201
    board = created.json()
    assert alice.post("/v1/boards", json={"name": "Towers"}).status_code == 409

    renamed = alice.patch(f"/v1/boards/{board['id']}", json={"name": "Tall towers"}).json()
    assert (renamed["name"], renamed["image_count"]) == ("Tall towers", 0)
    assert "Tall towers" in [b["name"] for b in alice.get("/v1/boards").json()["boards"]]
    assert bob.get("/v1/boards").json()["boards"] == []
    assert bob.patch(f"/v1/boards/{board['id']}", json={"name": "x"}).status_code == 404
    assert bob.delete(f"/v1/boards/{board['id']}").status_code == 404

    assert alice.delete(f"/v1/boards/{board['id']}").status_code == 204
    assert "Tall towers" not in [b["name"] for b in alice.get("/v1/boards").json()["boards"]]


def test_another_users_image_is_a_404_like_a_missing_one(
    service: GalleryService, alice: httpx.Client, bob: httpx.Client
) -> None:
    bobs = store(service, "bob", "bob's private study")
    attempts = [
        ("GET", f"/v1/images/{bobs}", None),
        ("GET", f"/v1/images/{bobs}/file", None),
        ("GET", f"/v1/images/{bobs}/thumbnail", None),
        ("GET", f"/v1/images/{bobs}/url", None),
        ("GET", f"/v1/images/{bobs}/lineage", None),
        ("PATCH", f"/v1/images/{bobs}", {"favourite": True}),
        ("DELETE", f"/v1/images/{bobs}", None),
    ]
    while_bobs = [alice.request(m, url, json=body) for m, url, body in attempts]
    assert ids(alice.get("/v1/images", params={"q": "private study"})) == []
    assert bob.get(f"/v1/images/{bobs}").json()["favourite"] is False
    bob.delete(f"/v1/images/{bobs}").raise_for_status()
    once_missing = [alice.request(m, url, json=body) for m, url, body in attempts]

    for before, after in zip(while_bobs, once_missing, strict=True):
        assert before.status_code == after.status_code == 404
        assert before.json()["error"]["message"] == after.json()["error"]["message"]
        assert before.json()["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("method", "url", "body", "field"),
    [
        ("GET", "/v1/images?limit=0", None, "limit"),
        ("GET", "/v1/images?limit=201", None, "limit"),
        ("GET", "/v1/images?favourite=maybe", None, "favourite"),
        ("GET", "/v1/images?created_after=yesterday", None, "created_after"),
        ("GET", "/v1/images?board_id=../etc", None, "board_id"),
        ("GET", "/v1/images?q=" + "x" * 501, None, "q"),
        ("GET", "/v1/images?cursor=garbage", None, "cursor"),
        ("GET", "/v1/images/not-an-id", None, "image_id"),
        ("PATCH", "/v1/images/" + "0" * 32, {}, "body"),
        ("PATCH", "/v1/images/" + "0" * 32, {"tags": ["x" * 65]}, "tags.0"),
        ("PATCH", "/v1/images/" + "0" * 32, {"prompt": "x"}, "prompt"),
        ("POST", "/v1/boards", {"name": ""}, "name"),
        ("POST", "/v1/boards", {"name": "x" * 101}, "name"),
        ("GET", "/v1/images/" + "0" * 32 + "/url?expires_in=0", None, "expires_in"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(
    alice: httpx.Client, method: str, url: str, body: object, field: str
) -> None:
    response = alice.request(method, url, json=body)

    assert response.status_code in (400, 422), response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert any(detail["field"].endswith(field) for detail in error["details"]), error
    assert all(detail["rule"] for detail in error["details"])


def test_requests_without_a_key_see_nothing(base_url: str, service: GalleryService) -> None:
    store(service, "alice", "alice only")

    response = httpx.get(f"{base_url}/v1/images")

    assert response.status_code == 401


def test_openapi_documents_every_gallery_route(base_url: str) -> None:
    paths = httpx.get(f"{base_url}/openapi.json").json()["paths"]
    assert {"get", "patch", "delete"} <= set(paths["/v1/images/{image_id}"])
    assert {"get", "post"} <= set(paths["/v1/boards"])
    assert {"patch", "delete"} <= set(paths["/v1/boards/{board_id}"])
    for path in ("/v1/images", "/v1/images/{image_id}/lineage", "/v1/images/{image_id}/file"):
        assert "get" in paths[path]
    params = {p["name"] for p in paths["/v1/images"]["get"]["parameters"]}
    assert {"q", "model", "lora", "tag", "board_id", "favourite", "cursor", "limit"} <= params
    assert {"created_after", "created_before"} <= params
