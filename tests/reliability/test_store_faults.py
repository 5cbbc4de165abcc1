"""Faults, part 2: the object store and the database go away and come back.

One stack of real processes (SeaweedFS, PostgreSQL of its own, generator, trainer,
gallery, gateway) that the tests break on purpose: the S3 server is stopped (cleanly, and
killed in the middle of a large upload) and PostgreSQL is shut down. While a dependency
is gone every call fails cleanly (gRPC UNAVAILABLE / HTTP 503 naming the dependency, no
stack trace), the services stay up and report not ready, and no gallery record is left
without its object. Once the dependency is back on the same port and data, the same calls
work again without restarting anything.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from diffusers import StableDiffusionPipeline
from PIL import Image, PngImagePlugin
from sqlalchemy.exc import OperationalError

from sdstack.launcher import Stack
from services.common.clients import GalleryClient
from services.common.config import Settings
from services.common.errors import SdstackError, Unavailable, translate
from services.common.object_store import OUTPUTS_BUCKET, ObjectStore
from services.common.proto.sdstack.v1 import gallery_pb2
from services.common.s3_server import LocalS3Server
from services.common.sql import check_database, create_engine_for
from services.generator.demo_model import DEMO_MODEL_NAME
from services.generator.loras import make_kohya_lora
from services.generator.tiny_model import TinyModelFiles
from tests.postgres_fixtures import RestartablePostgres
from tests.s3_fixtures import free_port
from tests.stack_fixtures import stack_settings

pytestmark = [pytest.mark.integration]
log = logging.getLogger(__name__)

OWNER = "local"  # the gateway's one user when no API keys are configured
READY_WITHIN_S = 10.0


@dataclass
class FaultyStack:
    settings: Settings
    stack: Stack
    postgres: RestartablePostgres
    lora: bytes

    @property
    def s3(self) -> LocalS3Server:
        assert self.stack.s3 is not None
        return self.stack.s3

    def gallery(self) -> GalleryClient:
        return GalleryClient(self.settings.target("gallery"), timeout=30)

    def http(self) -> httpx.Client:
        url = f"http://{self.settings.host}:{self.settings.gateway_port}"
        return httpx.Client(base_url=url, timeout=60)

    def store(self) -> ObjectStore:
        s = self.settings
        return ObjectStore(f"{s.host}:{s.s3_port}", s.s3_access_key, s.s3_secret_key)

    def services_alive(self) -> bool:
        return all(child.process.poll() is None for child in self.stack.children)


@pytest.fixture(scope="module")
def faulty(
    tmp_path_factory: pytest.TempPathFactory,
    clip_tokenizer_dir: Path,
    tiny_model_files: TinyModelFiles,
) -> Iterator[FaultyStack]:
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model_files.diffusers_dir, local_files_only=True
    )
    folder = tmp_path_factory.mktemp("store-faults")
    lora = make_kohya_lora(pipe, folder / "fault.safetensors", seed=3, scale=1.0).read_bytes()
    postgres = RestartablePostgres()
    postgres.start()
    settings = stack_settings(
        folder / "data",
        clip_tokenizer_dir,
        database_url=postgres.server.url(),
        default_checkpoint=DEMO_MODEL_NAME,
    )
    stack = Stack(settings)
    try:
        stack.start()
        yield FaultyStack(settings, stack, postgres, lora)
    finally:
        stack.stop()
        postgres.remove()


@pytest.fixture(autouse=True)
def _dependencies_back(request: pytest.FixtureRequest) -> Iterator[None]:
    """Whatever a test broke is running again after it, so one failure stays one."""
    yield
    if "faulty" not in request.fixturenames:
        return
    faulty: FaultyStack = request.getfixturevalue("faulty")
    if not faulty.s3.running:
        faulty.s3.start()
    if not faulty.postgres.running:
        faulty.postgres.start()


def _png(seed: int, side: int = 64) -> bytes:
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"a lighthouse\nSteps: 2, Sampler: Euler, Seed: {seed}")
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def _create(gallery: GalleryClient, seed: int) -> gallery_pb2.Image:
    request = gallery_pb2.CreateImageRequest(owner=OWNER, png=_png(seed), request_id=f"r{seed}")
    return gallery.create_image(request)


def _unavailable(call: Callable[[], object], names: str) -> SdstackError:
    """The call fails UNAVAILABLE with a message naming `names` and no stack trace."""
    with pytest.raises(SdstackError) as failed:
        call()
    error = failed.value
    assert error.status.name == "UNAVAILABLE", (error.status, error.message)
    assert names in error.message and _clean(error.message), error.message
    return error


def _clean(message: str) -> bool:
    """One line, no stack trace, no SQL library boilerplate."""
    return "\n" not in message and not any(
        marker in message for marker in ("Traceback", 'File "', "sqlalche.me", "SELECT")
    )


def _http_503(response: httpx.Response, names: str) -> None:
    assert response.status_code == 503, response.text
    body = response.json()["error"]
    assert body["code"] == "UNAVAILABLE", body
    assert names in body["message"] and _clean(body["message"]), body
    assert "Traceback" not in response.text


def _upload_lora(http: httpx.Client, lora: bytes, name: str) -> httpx.Response:
    params = {"name": name, "kind": "lora", "format": "safetensors", "overwrite": "true"}
    headers = {"content-type": "application/octet-stream"}
    return http.post("/v1/models", params=params, content=lora, headers=headers)


def _upload_dataset(http: httpx.Client, name: str) -> httpx.Response:
    files = [
        ("files", ("one.png", _png(1), "image/png")),
        ("files", ("one.txt", b"a lighthouse", "text/plain")),
    ]
    return http.post("/v1/datasets", files=files, data={"name": name})


def _generate(http: httpx.Client) -> httpx.Response:
    body = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 4}
    return http.post("/v1/generations", json=body)


def _wait_for(what: str, ready: Callable[[], bool], within: float = READY_WITHIN_S) -> float:
    """Seconds until `ready()` held; fails after `within`."""
    started = time.monotonic()
    while not ready():
        assert time.monotonic() - started < within, f"{what} not within {within} s"
        time.sleep(0.1)
    return time.monotonic() - started


def _readyz(http: httpx.Client) -> tuple[int, dict]:
    response = http.get("/readyz")
    return response.status_code, response.json()


def _records_have_objects(faulty: FaultyStack) -> None:
    """Every gallery record of the owner has its PNG and thumbnail in the store."""
    store = faulty.store()
    with faulty.gallery() as gallery:
        images = gallery.list_images(gallery_pb2.ListImagesRequest(owner=OWNER, limit=200))
    for image in images.images:
        assert store.exists(OUTPUTS_BUCKET, f"{OWNER}/{image.id}.png"), image.id
        assert store.exists(OUTPUTS_BUCKET, f"{OWNER}/{image.id}.thumb.webp"), image.id
    store.close()


def test_a_lost_database_is_unavailable_in_one_clean_line() -> None:
    """The translator every service's gRPC interceptor uses: a refused connection is
    UNAVAILABLE naming the database, without SQL or SQLAlchemy's boilerplate."""
    engine = create_engine_for(f"postgresql+psycopg://sdstack@127.0.0.1:{free_port()}/none")
    started = time.monotonic()
    with pytest.raises(Unavailable) as down:
        check_database(engine)
    assert time.monotonic() - started < 5
    assert down.value.message.startswith("database unavailable: ")
    assert _clean(down.value.message), down.value.message
    with pytest.raises(OperationalError) as raw, engine.connect():
        pass
    translated = translate(raw.value)
    assert isinstance(translated, Unavailable) and translated.message == down.value.message
    engine.dispose()


def test_store_stopped_calls_fail_cleanly_and_work_again_after_restart(
    faulty: FaultyStack,
) -> None:
    with faulty.gallery() as gallery, faulty.http() as http:
        before = _create(gallery, seed=1)
        started = time.monotonic()
        faulty.s3.stop()
        stopped_in = time.monotonic() - started
        create_failed_in = _store_calls_fail(faulty, gallery, http, before.id)
        status, body = _readyz(http)
        assert status == 503 and body["backends"]["gallery"] == "unavailable", body
        started = time.monotonic()
        faulty.s3.start()
        s3_started_in = time.monotonic() - started
        _wait_for("gateway ready", lambda: _readyz(http)[0] == 200)
        ready_in = time.monotonic() - started
        _store_calls_work(faulty, gallery, http, before.id)
    _records_have_objects(faulty)
    log.info(
        "store outage: stop took %.2f s; create failed in %.2f s; readyz during: %s; "
        "restart took %.2f s, readyz 200 %.2f s after the restart began",
        *(stopped_in, create_failed_in, body, s3_started_in, ready_in),
    )


def _store_calls_fail(
    faulty: FaultyStack, gallery: GalleryClient, http: httpx.Client, image_id: str
) -> float:
    """Storing an image, reading a file, uploading a LoRA and a dataset, and a generation
    (its images go to the gallery) all fail cleanly while the store is down; the gallery
    says not ready. Returns how long the create took to fail (its bounded retries)."""
    started = time.monotonic()
    _unavailable(lambda: _create(gallery, seed=2), "object store")
    create_failed_in = time.monotonic() - started
    _http_503(http.get(f"/v1/images/{image_id}/file"), "object store")
    _http_503(_upload_lora(http, faulty.lora, "fault-lora"), "object store")
    _http_503(_upload_dataset(http, "fault-ds"), "object store")
    _http_503(_generate(http), "object store")
    _wait_for("gallery NOT_SERVING", lambda: not gallery.is_serving())
    assert faulty.services_alive()
    return create_failed_in


def _store_calls_work(
    faulty: FaultyStack, gallery: GalleryClient, http: httpx.Client, image_id: str
) -> None:
    """The same calls work again, on the services that never restarted."""
    after = _create(gallery, seed=3)
    assert gallery.image_file(OWNER, after.id) and gallery.image_file(OWNER, image_id)
    assert _upload_lora(http, faulty.lora, "fault-lora").status_code == 201
    assert _upload_dataset(http, "fault-ds").status_code == 201
    generated = _generate(http)
    assert generated.status_code == 200 and len(generated.json()["images"]) == 1, generated.text


def _data_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def test_store_killed_during_a_large_upload_leaves_no_object(faulty: FaultyStack) -> None:
    """A 48 MiB multipart upload cut by a crash of the store: Unavailable after the bounded
    retries, no object under the key after the restart, and the same upload then works."""
    payload = os.urandom(48 * 1024 * 1024)
    key = "local/large-upload.bin"
    store = faulty.store()
    data_dir = faulty.s3.base_dir / "data"
    baseline = _data_bytes(data_dir)
    outcome: list[BaseException | None] = []

    def upload() -> None:
        try:
            store.put(OUTPUTS_BUCKET, key, payload)
            outcome.append(None)
        except BaseException as error:  # reported to the test thread
            outcome.append(error)

    uploader = threading.Thread(target=upload)
    uploader.start()
    deadline = time.monotonic() + READY_WITHIN_S
    while _data_bytes(data_dir) < baseline + 4 * 1024 * 1024:  # the first part is arriving
        assert time.monotonic() < deadline and uploader.is_alive(), "the upload never started"
        time.sleep(0.01)
    faulty.s3.kill()
    uploader.join(60)
    assert outcome and isinstance(outcome[0], Unavailable), outcome
    assert "object store" in outcome[0].message
    faulty.s3.start()
    assert not store.exists(OUTPUTS_BUCKET, key)
    info = store.put(OUTPUTS_BUCKET, key, payload)
    assert info.sha256 == hashlib.sha256(payload).hexdigest()
    assert store.get_bytes(OUTPUTS_BUCKET, key) == payload
    store.delete(OUTPUTS_BUCKET, key)
    store.close()
    with faulty.gallery() as gallery:
        _wait_for("gallery SERVING", gallery.is_serving)


def test_database_down_calls_fail_cleanly_and_work_again_after_restart(
    faulty: FaultyStack,
) -> None:
    with faulty.gallery() as gallery, faulty.http() as http:
        image = _create(gallery, seed=10)
        faulty.postgres.stop()
        started = time.monotonic()
        read_failed_in = _database_calls_fail(faulty, gallery, http, image.id)
        not_ready_in = time.monotonic() - started
        status, body = _readyz(http)
        assert status == 503 and body["backends"]["gallery"] == "unavailable", body
        started = time.monotonic()
        faulty.postgres.start()
        pg_started_in = time.monotonic() - started
        _wait_for("gateway ready", lambda: _readyz(http)[0] == 200)
        ready_in = time.monotonic() - started
        _database_calls_work(gallery, http, image.id)
    _records_have_objects(faulty)
    log.info(
        "database outage: read failed in %.2f s, health NOT_SERVING %.2f s after the stop; "
        "readyz during: %s; restart took %.2f s, readyz 200 %.2f s after the restart began",
        *(read_failed_in, not_ready_in, body, pg_started_in, ready_in),
    )


def _database_calls_fail(
    faulty: FaultyStack, gallery: GalleryClient, http: httpx.Client, image_id: str
) -> float:
    """Reads and writes fail cleanly while the database is down, a failed create leaves
    no object behind, and the gallery says not ready. Returns how long a read took."""
    store = faulty.store()
    objects = {o.key for o in store.list(OUTPUTS_BUCKET)}
    started = time.monotonic()
    _unavailable(lambda: gallery.get_image(OWNER, image_id), "database")
    read_failed_in = time.monotonic() - started
    _unavailable(lambda: _create(gallery, seed=11), "database")
    _http_503(http.get("/v1/images"), "database")
    _http_503(http.get(f"/v1/images/{image_id}/file"), "database")
    _http_503(http.post("/v1/boards", json={"name": "outage"}), "database")
    assert {o.key for o in store.list(OUTPUTS_BUCKET)} == objects
    store.close()
    _wait_for("gallery NOT_SERVING", lambda: not gallery.is_serving())
    assert faulty.services_alive()
    return read_failed_in


def _database_calls_work(gallery: GalleryClient, http: httpx.Client, image_id: str) -> None:
    """The same calls work again on the pooled engine, and reconcile finds nothing to mend."""
    assert gallery.get_image(OWNER, image_id).id == image_id
    assert _create(gallery, seed=12).id
    assert http.get("/v1/images").status_code == 200
    assert http.post("/v1/boards", json={"name": "outage"}).status_code == 201
    report = gallery.reconcile(dry_run=True, min_age=timedelta(0))
    assert not (report.orphan_objects or report.orphan_records or report.restored), report
