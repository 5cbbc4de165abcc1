"""Bad and hostile input across the REST API (`/v1`), the A1111 API (`/sdapi/v1`) and the
services' gRPC APIs (SPEC §9): every case gets its documented 4xx / INVALID_ARGUMENT (or
NOT_FOUND for another owner's id) with a message naming the problem; afterwards nothing
stored has changed and the stack still serves.

One table, one row per bad input: `Case(id, call, status, words)`. `call` sends the input
and returns (status, message) — an HTTP status and the error's message, or a gRPC status
name and the error's message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
import sqlalchemy

from services.common.clients import GalleryClient, GeneratorClient
from services.common.clients.trainer import TrainerClient
from services.common.errors import SdstackError
from services.common.proto.sdstack.v1 import (
    common_pb2,
    gallery_pb2,
    generator_pb2,
    trainer_pb2,
)
from tests.reliability import payloads as p
from tests.stack_fixtures import ExtraProcess, RunningStack, start_gateway

pytestmark = [pytest.mark.integration]

ALICE, BOB = "alice-key-reliability", "bob-key-reliability"
MAX_BODY = 256 * 1024
TINY = {"prompt": "a stone bridge", "seed": 3, "width": 64, "height": 64, "steps": 2}
BUCKETS = ("models", "loras", "datasets", "outputs")


# -- the stack under test ------------------------------------------------------------------


@dataclass
class World:
    """The gateway with two users' keys, typed gRPC clients, and what alice owns."""

    stack: RunningStack
    gateway: ExtraProcess
    alice: httpx.Client
    bob: httpx.Client
    generator: GeneratorClient
    gallery: GalleryClient
    trainer: TrainerClient
    tmp: Path
    image_id: str = ""
    board_id: str = ""
    dataset_id: str = ""
    extra: dict[str, object] = field(default_factory=dict)


@pytest.fixture(scope="module")
def world(running_stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    gateway = start_gateway(
        running_stack,
        tmp_path_factory.mktemp("reliability-gateway"),
        api_keys=f"{ALICE}:alice,{BOB}:bob",
        rate_limit_per_minute=0,
        max_body_bytes=MAX_BODY,
    )
    s = running_stack.settings
    w = World(
        stack=running_stack,
        gateway=gateway,
        alice=gateway.http(authorization=f"Bearer {ALICE}"),
        bob=gateway.http(authorization=f"Bearer {BOB}"),
        generator=GeneratorClient(s.target("generator")),
        gallery=GalleryClient(s.target("gallery")),
        trainer=TrainerClient(s.target("trainer")),
        tmp=tmp_path_factory.mktemp("reliability"),
    )
    try:
        made = w.alice.post("/v1/generations", json=TINY)
        assert made.status_code == 200, made.text
        w.image_id = made.json()["images"][0]["id"]
        board = w.alice.post("/v1/boards", json={"name": "alice's board"})
        assert board.status_code == 201, board.text
        w.board_id = board.json()["id"]
        files = [("files", ("a.png", p.png(), "image/png")), ("files", ("a.txt", b"a cat"))]
        dataset = w.alice.post("/v1/datasets", files=files, data={"name": "alice's set"})
        assert dataset.status_code == 201, dataset.text
        w.dataset_id = dataset.json()["id"]
        yield w
    finally:
        for client in (w.alice, w.bob, w.generator, w.gallery, w.trainer):
            client.close()
        gateway.stop()


def snapshot(w: World) -> dict[str, object]:
    """Every object in the store (key, size, etag) and every SQL table's row count."""
    store = w.stack.object_store()
    objects = {
        bucket: sorted((o.key, o.size, o.etag) for o in store.list(bucket)) for bucket in BUCKETS
    }
    database = sqlalchemy.create_engine(w.stack.settings.resolved_database_url)
    try:
        with database.connect() as connection:
            tables = sqlalchemy.inspect(connection).get_table_names()
            counts = {
                t: connection.execute(sqlalchemy.text(f'SELECT COUNT(*) FROM "{t}"')).scalar()
                for t in tables
            }
    finally:
        database.dispose()
    return {"objects": objects, "rows": counts}


@pytest.fixture(scope="module")
def before(world: World) -> dict[str, object]:
    return snapshot(world)


# -- how a case is sent and judged ---------------------------------------------------------

Outcome = tuple[int | str, str]


def http(response: httpx.Response) -> Outcome:
    try:
        body = response.json()
    except json.JSONDecodeError:
        return response.status_code, response.text
    error = body.get("error", {}) if isinstance(body, dict) else {}
    return response.status_code, json.dumps(error) if error else response.text


def rpc(call: Callable[[], object]) -> Outcome:
    try:
        result = call()
        if hasattr(result, "__next__"):
            list(result)  # type: ignore[call-overload]
    except SdstackError as error:
        return error.status.name, error.message
    except grpc.RpcError as error:
        return error.code().name, error.details() or ""
    return "OK", ""


def raw_json(client: httpx.Client, path: str, text: str) -> httpx.Response:
    return client.post(path, content=text, headers={"content-type": "application/json"})


def gen(w: World, **fields: object) -> Outcome:
    return http(w.alice.post("/v1/generations", json={**TINY, **fields}))


def a1111(w: World, path: str, **fields: object) -> Outcome:
    return http(w.alice.post(f"/sdapi/v1/{path}", json={**TINY, **fields}))


def upload_model(w: World, data: bytes, **query: str) -> Outcome:
    params = {"name": "hostile", "kind": "checkpoint", "format": "safetensors", **query}
    headers = {"content-type": "application/octet-stream"}
    return http(w.alice.post("/v1/models", params=params, content=data, headers=headers))


def upload_dataset(w: World, *files: tuple[str, bytes], name: str = "hostile") -> Outcome:
    parts = [("files", (filename, data)) for filename, data in files]
    return http(w.alice.post("/v1/datasets", files=parts, data={"name": name}))


def grpc_generate(w: World, **params: object) -> Outcome:
    base = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 1, "batch_size": 1}
    request = generator_pb2.GenerateRequest(
        mode=generator_pb2.GENERATION_MODE_TXT2IMG,
        request_id="hostile-grpc",
        owner="alice",
        params=common_pb2.GenerationParams(**{**base, **params}),
    )
    return rpc(lambda: w.generator.generate(request, timeout=60))


def chunked(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), 64 * 1024):
        yield body[start : start + 64 * 1024]


def marker(w: World) -> Path:
    return w.tmp / "pwned"


@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[World], Outcome]
    status: int | str
    words: tuple[str, ...]


def case(id: str, call: Callable[[World], Outcome], status: int | str, *words: str) -> Case:
    return Case(id, call, status, words)


DEEP = "(" * 5000 + "cat" + ")" * 5000
BIG_JSON = json.dumps({**TINY, "prompt": "x" * (MAX_BODY + 1)})

CASES = [
    # -- REST /v1: sizes, numbers, enums ------------------------------------------------------
    case("rest-body-over-limit", lambda w: gen(w, prompt="x" * (MAX_BODY + 1)), 413, "at most"),
    case(
        "rest-body-over-limit-chunked",
        lambda w: http(
            w.alice.post(
                "/v1/generations",
                content=chunked(BIG_JSON.encode()),
                headers={"content-type": "application/json"},
            )
        ),
        413,
        "at most",
    ),
    case("rest-prompt-100k-chars", lambda w: gen(w, prompt="x" * 100_000), 422, "prompt"),
    case("rest-width-not-multiple-of-8", lambda w: gen(w, width=65), 422, "width", "multiple"),
    case(
        "rest-batch-times-size-over-budget",
        lambda w: gen(w, batch_size=8, width=2048, height=2048),
        400,
        "batch_size",
    ),
    case("rest-size-over-limit", lambda w: gen(w, width=2048, height=4096), 422, "height"),
    case("rest-batch-over-limit", lambda w: gen(w, batch_size=10_000), 422, "batch_size"),
    case("rest-steps-zero", lambda w: gen(w, steps=0), 422, "steps"),
    case("rest-steps-huge", lambda w: gen(w, steps=10**9), 422, "steps"),
    case(
        "rest-cfg-nan",
        lambda w: http(raw_json(w.alice, "/v1/generations", '{"prompt": "x", "cfg_scale": NaN}')),
        422,
        "cfg_scale",
    ),
    case(
        "rest-cfg-infinity",
        lambda w: http(
            raw_json(w.alice, "/v1/generations", '{"prompt": "x", "cfg_scale": Infinity}')
        ),
        422,
        "cfg_scale",
    ),
    case("rest-seed-overflow", lambda w: gen(w, seed=2**70), 422, "seed"),
    case("rest-unknown-mode", lambda w: gen(w, mode="txt2video"), 422, "mode"),
    case("rest-unknown-schedule", lambda w: gen(w, schedule_type="Cubic"), 422, "schedule_type"),
    case("rest-unknown-sampler", lambda w: gen(w, sampler="Euler z"), 400, "sampler"),
    case("rest-unknown-model", lambda w: gen(w, model="no-such-model"), 404, "no-such-model"),
    case("rest-unknown-field", lambda w: gen(w, cfg=7), 422, "cfg"),
    case("rest-malformed-json", lambda w: http(raw_json(w.alice, "/v1/generations", '{"a":')), 422),
    case("rest-deeply-nested-brackets", lambda w: gen(w, prompt=DEEP), 400, "prompt"),
    # -- REST /v1: unicode --------------------------------------------------------------------
    case(
        "rest-lone-surrogate",
        lambda w: http(raw_json(w.alice, "/v1/generations", '{"prompt": "a \\ud800 cat"}')),
        422,
        "prompt",
    ),
    case("rest-nul-in-prompt", lambda w: gen(w, prompt="a\x00cat"), 422, "prompt", "NUL"),
    case(
        "rest-rtl-zero-width-style-name",
        lambda w: http(w.alice.put("/v1/styles/evil\u202egnp.exe\u200b", json={})),
        422,
        "name",
    ),
    # -- REST /v1: images ---------------------------------------------------------------------
    case(
        "rest-malformed-base64",
        lambda w: gen(w, mode="img2img", image={"data": "not*base64!"}),
        400,
        "image.data",
        "base64",
    ),
    case(
        "rest-decompression-bomb",
        lambda w: gen(w, mode="img2img", image={"data": p.b64(p.png_bomb())}),
        400,
        "image.data",
        "limit",
    ),
    case(
        "rest-truncated-png",
        lambda w: gen(w, mode="img2img", image={"data": p.b64(p.truncated_png())}),
        400,
        "image.data",
    ),
    case(
        "rest-gif-js-polyglot",
        lambda w: gen(w, mode="img2img", image={"data": p.b64(p.GIF_JS_POLYGLOT)}),
        400,
        "image.data",
        "PNG, JPEG or WebP",
    ),
    case(
        "rest-mask-of-another-size",
        lambda w: gen(
            w,
            mode="inpaint",
            image={"data": p.b64(p.png(64, 64))},
            mask={"data": p.b64(p.png(32, 48))},
        ),
        400,
        "mask",
    ),
    case(
        "rest-ssrf-url-as-image",
        lambda w: gen(
            w, mode="img2img", image={"data": "http://169.254.169.254/latest/meta-data/"}
        ),
        400,
        "image.data",
        "base64",
    ),
    case(
        "rest-image-id-traversal",
        lambda w: gen(w, mode="img2img", image={"image_id": "../../outputs/x"}),
        422,
        "image_id",
    ),
    case(
        "rest-style-preview-html",
        lambda w: http(w.alice.put("/v1/styles/hostile", json={"preview": p.b64(p.HTML_AS_PNG)})),
        400,
        "preview",
    ),
    # -- REST /v1: names and paths ------------------------------------------------------------
    case(
        "rest-lora-name-traversal",
        lambda w: gen(w, loras=[{"name": "../../models/x", "weight": 1}]),
        422,
        "loras",
    ),
    case(
        "rest-model-name-traversal",
        lambda w: gen(w, model="../../etc/passwd"),
        404,
        "checkpoint not found",
    ),
    case("rest-style-name-dot", lambda w: http(w.alice.put("/v1/styles/.env", json={})), 422),
    case(
        "rest-style-lora-traversal",
        lambda w: http(w.alice.put("/v1/styles/hostile", json={"lora": "../../x"})),
        400,
        "lora",
    ),
    case(
        "rest-upload-name-traversal",
        lambda w: upload_model(w, b"x", name="../../models/evil"),
        422,
        "name",
    ),
    case("rest-upload-unknown-kind", lambda w: upload_model(w, b"x", kind="script"), 422, "kind"),
    case(
        "rest-board-name-nul",
        lambda w: http(w.alice.post("/v1/boards", json={"name": "a\x00b"})),
        400,
        "name",
    ),
    case(
        "rest-board-id-traversal",
        lambda w: http(w.alice.patch("/v1/boards/..%2F..%2Fx", json={"name": "b"})),
        404,
    ),
    case(
        "rest-tag-with-nul",
        lambda w: http(w.alice.patch(f"/v1/images/{w.image_id}", json={"tags": ["a\x00b"]})),
        400,
        "tags",
    ),
    # -- REST /v1: hostile model files --------------------------------------------------------
    case(
        "rest-malicious-pickle-ckpt",
        lambda w: upload_model(w, p.malicious_ckpt(marker(w)), format="ckpt"),
        400,
        "refused",
    ),
    case(
        "rest-pickle-renamed-safetensors",
        lambda w: upload_model(w, p.malicious_ckpt(marker(w))),
        400,
        "model",
    ),
    *(
        case(
            f"rest-garbled-pickle-{kind}",
            lambda w, kind=kind, fmt=fmt: upload_model(w, p.GARBLED_PICKLE, kind=kind, format=fmt),
            400,
            "corrupt",
        )
        for kind, fmt in (("checkpoint", "ckpt"), ("vae", "ckpt"), ("upscaler", "pth"))
    ),
    case("rest-lying-header-length", lambda w: upload_model(w, p.lying_header_length()), 400),
    case("rest-lying-offsets", lambda w: upload_model(w, p.lying_offsets()), 400, "tensor w"),
    case(
        "rest-pickle-as-lora",
        lambda w: upload_model(w, p.malicious_ckpt(marker(w)), kind="lora"),
        400,
    ),
    case(
        "rest-pickle-as-tagger-onnx",
        lambda w: upload_model(w, p.malicious_ckpt(marker(w)), kind="tagger", format="onnx"),
        400,
        "ONNX",
    ),
    # -- REST /v1: hostile datasets -----------------------------------------------------------
    case("rest-zip-slip", lambda w: upload_dataset(w, ("d.zip", p.zip_slip())), 400, "relative"),
    case(
        "rest-zip-bomb-entries",
        lambda w: upload_dataset(w, ("d.zip", p.zip_bomb_entries(10_001))),
        400,
        "at most",
    ),
    case(
        "rest-zip-bomb-bytes",
        lambda w: upload_dataset(w, ("d.zip", w.extra["bomb"])),  # type: ignore[arg-type]
        400,
        "MiB",
    ),
    case(
        "rest-dataset-file-traversal",
        lambda w: upload_dataset(w, ("../../etc/x.png", p.png())),
        400,
        "path",
    ),
    case(
        "rest-dataset-png-bomb",
        lambda w: upload_dataset(w, ("10_a/bomb.png", p.png_bomb())),
        400,
        "bomb.png",
    ),
    case(
        "rest-dataset-html-named-png",
        lambda w: upload_dataset(w, ("10_a/a.png", p.HTML_AS_PNG)),
        400,
        "a.png",
    ),
    case(
        "rest-caption-path-traversal",
        lambda w: http(
            w.alice.put(
                f"/v1/datasets/{w.dataset_id}/captions",
                json={"path": "../../../outputs/x.png", "caption": "x"},
            )
        ),
        400,
        "path",
    ),
    # -- REST /v1: another owner's ids --------------------------------------------------------
    case("rest-other-owner-image", lambda w: http(w.bob.get(f"/v1/images/{w.image_id}")), 404),
    case(
        "rest-other-owner-image-file",
        lambda w: http(w.bob.get(f"/v1/images/{w.image_id}/file")),
        404,
    ),
    case(
        "rest-other-owner-image-delete",
        lambda w: http(w.bob.delete(f"/v1/images/{w.image_id}")),
        404,
    ),
    case(
        "rest-other-owner-image-patch",
        lambda w: http(w.bob.patch(f"/v1/images/{w.image_id}", json={"favourite": True})),
        404,
    ),
    case(
        "rest-other-owner-as-source",
        lambda w: http(
            w.bob.post(
                "/v1/generations",
                json={**TINY, "mode": "img2img", "image": {"image_id": w.image_id}},
            )
        ),
        404,
    ),
    case(
        "rest-other-owner-board",
        lambda w: http(w.bob.patch(f"/v1/boards/{w.board_id}", json={"name": "mine"})),
        404,
    ),
    case(
        "rest-other-owner-dataset",
        lambda w: http(w.bob.get(f"/v1/datasets/{w.dataset_id}")),
        404,
    ),
    case(
        "rest-other-owner-dataset-delete",
        lambda w: http(w.bob.delete(f"/v1/datasets/{w.dataset_id}")),
        404,
    ),
    case("rest-no-key", lambda w: http(httpx.get(f"{w.gateway.base_url}/v1/images")), 401),
    # -- A1111 API ----------------------------------------------------------------------------
    case("a1111-width-65", lambda w: a1111(w, "txt2img", width=65), 422, "width"),
    case(
        "a1111-cfg-nan",
        lambda w: http(raw_json(w.alice, "/sdapi/v1/txt2img", '{"cfg_scale": NaN}')),
        422,
        "cfg_scale",
    ),
    case("a1111-unknown-sampler", lambda w: a1111(w, "txt2img", sampler_name="Nope"), 400),
    case(
        "a1111-ssrf-url-init-image",
        lambda w: a1111(w, "img2img", init_images=["http://127.0.0.1:8333/models/"]),
        400,
        "base64",
    ),
    case(
        "a1111-malformed-base64",
        lambda w: a1111(w, "img2img", init_images=["%%%%"]),
        400,
        "base64",
    ),
    case(
        "a1111-mask-of-another-size",
        lambda w: a1111(
            w, "img2img", init_images=[p.b64(p.png(64, 64))], mask=p.b64(p.png(48, 32))
        ),
        400,
        "mask",
    ),
    case(
        "a1111-png-info-bomb",
        lambda w: http(w.alice.post("/sdapi/v1/png-info", json={"image": p.b64(p.png_bomb())})),
        400,
        "image",
        "limit",
    ),
    case(
        "a1111-options-checkpoint-traversal",
        lambda w: http(
            w.alice.post("/sdapi/v1/options", json={"sd_model_checkpoint": "../../etc/passwd"})
        ),
        404,
    ),
    case(
        "a1111-options-clip-skip-nan",
        lambda w: http(raw_json(w.alice, "/sdapi/v1/options", '{"CLIP_stop_at_last_layers": NaN}')),
        400,
        "CLIP_stop_at_last_layers",
    ),
    case(
        "a1111-unknown-style",
        lambda w: a1111(w, "txt2img", styles=["../../loras/x"]),
        422,
        "styles",
    ),
    case(
        "a1111-extras-bomb",
        lambda w: http(
            w.alice.post("/sdapi/v1/extra-single-image", json={"image": p.b64(p.png_bomb())})
        ),
        400,
        "image",
    ),
    # -- gRPC ---------------------------------------------------------------------------------
    case(
        "grpc-generator-width-65", lambda w: grpc_generate(w, width=65), "INVALID_ARGUMENT", "width"
    ),
    case(
        "grpc-generator-cfg-nan",
        lambda w: grpc_generate(w, cfg_scale=float("nan")),
        "INVALID_ARGUMENT",
        "cfg_scale",
    ),
    case(
        "grpc-generator-style-traversal",
        lambda w: rpc(lambda: w.generator.get_style("../../models/x")),
        "INVALID_ARGUMENT",
        "name",
    ),
    case(
        "grpc-generator-import-traversal",
        lambda w: rpc(
            lambda: w.generator.import_model(
                w.extra["small"],  # type: ignore[arg-type]
                name="../x",
                kind=common_pb2.MODEL_KIND_LORA,
                file_format="safetensors",
            )
        ),
        "INVALID_ARGUMENT",
        "name",
    ),
    case(
        "grpc-generator-unknown-kind",
        lambda w: rpc(lambda: w.generator.list_models(77)),  # type: ignore[arg-type]
        "INVALID_ARGUMENT",
        "kind",
    ),
    case(
        "grpc-gallery-other-owner",
        lambda w: rpc(lambda: w.gallery.get_image("bob", w.image_id)),
        "NOT_FOUND",
    ),
    case(
        "grpc-gallery-bad-cursor",
        lambda w: rpc(
            lambda: w.gallery.list_images(
                gallery_pb2.ListImagesRequest(owner="alice", cursor="'; DROP TABLE images;--")
            )
        ),
        "INVALID_ARGUMENT",
        "cursor",
    ),
    case(
        "grpc-gallery-owner-missing",
        lambda w: rpc(lambda: w.gallery.create_board("", "b")),
        "INVALID_ARGUMENT",
        "owner",
    ),
    case(
        "grpc-trainer-dataset-id-traversal",
        lambda w: rpc(lambda: w.trainer.get_dataset("alice", "../../datasets/x")),
        "INVALID_ARGUMENT",
        "dataset",
    ),
    case(
        "grpc-trainer-other-owner",
        lambda w: rpc(lambda: w.trainer.get_dataset("bob", w.dataset_id)),
        "NOT_FOUND",
    ),
    case(
        "grpc-trainer-file-traversal",
        lambda w: rpc(lambda: w.trainer.create_dataset("alice", "x", [("../x.png", p.png())])),
        "INVALID_ARGUMENT",
        "path",
    ),
    case(
        "grpc-trainer-zip-slip",
        lambda w: rpc(lambda: w.trainer.create_dataset("alice", "x", [("d.zip", p.zip_slip())])),
        "INVALID_ARGUMENT",
        "relative path",
    ),
    case(
        "grpc-trainer-lr-nan",
        lambda w: rpc(
            lambda: w.trainer.estimate(
                "alice",
                trainer_pb2.TrainingConfig(
                    dataset_id=w.dataset_id,
                    base_model="x",
                    output_name="y",
                    learning_rate=float("nan"),
                ),
            )
        ),
        "INVALID_ARGUMENT",
        "learning_rate",
    ),
]


def test_the_table_is_at_least_forty_bad_inputs() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def prepared(world: World, before: dict[str, object]) -> World:
    world.extra["bomb"] = p.zip_bomb_bytes(2 * 1024**3 + 16 * 1024 * 1024)
    small = world.tmp / "small.safetensors"
    small.write_bytes(p.lying_offsets())
    world.extra["small"] = small
    return world


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_with_a_message_naming_the_problem(prepared: World, bad: Case) -> None:
    status, message = bad.call(prepared)
    assert status == bad.status, f"{bad.id}: {status} {message}"
    for word in bad.words:
        assert word.lower() in message.lower(), f"{bad.id}: {word!r} not in {message}"
    assert "Traceback" not in message
    assert not marker(prepared).exists(), "a pickle's code ran"


def test_nothing_stored_changed(prepared: World, before: dict[str, object]) -> None:
    assert snapshot(prepared) == before
    assert not Path("/tmp/sdstack-zip-slip.png").exists()


def test_still_healthy_and_text_comes_back_as_data(prepared: World) -> None:
    """After every bad input: ready, a tiny generation works, and hostile text (markup,
    right-to-left and zero-width characters) is stored and answered as JSON text."""
    w = prepared
    assert w.alice.get("/readyz").status_code == 200
    hostile = '<script>alert("x")</script> \u202eRTL\u200b zero-width <img src=x onerror=1>'
    made = w.alice.post("/v1/generations", json={**TINY, "prompt": hostile})
    assert made.status_code == 200, made.text
    assert made.headers["content-type"] == "application/json"
    image = made.json()["images"][0]
    assert image["prompt"] == hostile
    tagged = w.alice.patch(f"/v1/images/{image['id']}", json={"tags": ["<b>bold</b>"]})
    assert tagged.status_code == 200
    assert tagged.json()["tags"] == ["<b>bold</b>"]
    board = w.alice.post("/v1/boards", json={"name": "<svg onload=alert(1)>"})
    assert board.status_code == 201
    assert board.json()["name"] == "<svg onload=alert(1)>"
    assert board.headers["content-type"] == "application/json"
