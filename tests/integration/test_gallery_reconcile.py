"""Crashes injected between the gallery's object and record writes, and the reconcile that
repairs them with nothing lost, on SQLite and PostgreSQL with the real local S3.

A crash is a real one: a child process runs the gallery facade and SIGKILLs itself at the
chosen point (after the PNG write, after the thumbnail write, between the record delete and
the object deletes). Then reconcile runs, as a function, over gRPC and through the CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from services.common.config import load_settings, settings_env
from services.common.object_store import ObjectStore
from services.common.s3_server import LocalS3Server
from services.gallery.images import ImageSettings
from services.gallery.reconcile import reconcile
from tests.gallery_support import GalleryService, a1111_png, serve_gallery
from tests.s3_fixtures import ACCESS_KEY, SECRET_KEY

pytestmark = pytest.mark.integration

ALICE = "alice"
REPO = Path(__file__).resolve().parents[2]
NOW = timedelta(0)

# Runs the facade in a child process and kills it (SIGKILL: no cleanup, no `finally`) at
# the point named by `crash`.
CHILD = """
import json, os, signal, sys
from pathlib import Path
from services.common.object_store import ObjectStore
from services.gallery.images import Images, ImageSettings
from services.common.sql import create_engine_for
from services.gallery.records import ImageRecords

job = json.loads(sys.argv[1])
store = ObjectStore(job["endpoint"], job["access_key"], job["secret_key"])
records = ImageRecords(create_engine_for(job["database_url"]))
images = Images(store, records, max_pixels=2**26, bucket=job["bucket"])

def die(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if job["crash"] == "before_record":
    records.add = die
elif job["crash"] == "before_thumbnail":
    put = store.put
    def put_until_thumbnail(bucket, key, *args, **kwargs):
        return die() if key.endswith(".webp") else put(bucket, key, *args, **kwargs)
    store.put = put_until_thumbnail
elif job["crash"] == "before_object_removal":
    images._remove_objects = die

if job["action"] == "create":
    images.create(
        job["owner"], Path(job["png"]).read_bytes(), ImageSettings(),
        request_id=job["request_id"], parent_id=job["parent_id"], tags=tuple(job["tags"]),
    )
else:
    images.delete(job["owner"], job["image_id"])
print("the crash point was never reached")
"""


@pytest.fixture
def gallery(object_store: ObjectStore, database_url: str) -> Iterator[GalleryService]:
    with serve_gallery(object_store, database_url) as service:
        yield service


def crash(
    gallery: GalleryService,
    s3: LocalS3Server,
    database_url: str,
    tmp_path: Path,
    *,
    crash: str,
    action: str = "create",
    **job: object,
) -> None:
    """Run one facade call in a child process that dies at `crash`."""
    png = tmp_path / "image.png"
    png.write_bytes(job.pop("png_bytes", a1111_png()))  # type: ignore[arg-type]
    spec = {
        "endpoint": s3.endpoint,
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        "database_url": database_url,
        "bucket": gallery.bucket,
        "crash": crash,
        "action": action,
        "owner": ALICE,
        "png": str(png),
        "request_id": "",
        "parent_id": None,
        "tags": [],
        **job,
    }
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr


def test_crash_before_the_record_write_is_repaired_with_nothing_lost(
    gallery: GalleryService, local_s3: LocalS3Server, database_url: str, tmp_path: Path
) -> None:
    parent = gallery.images.create(ALICE, a1111_png("the source"), ImageSettings())
    png = a1111_png("a crashed villa, <lora:archi:0.6>", seed=1234, **{"Lora hashes": "archi: ab"})
    crash(
        gallery,
        local_s3,
        database_url,
        tmp_path,
        crash="before_record",
        png_bytes=png,
        request_id="req-crash",
        parent_id=parent.id,
        tags=["night", "villa"],
    )
    orphans = [k for k in gallery.object_keys() if not k.startswith(f"alice/{parent.id}")]
    assert len(orphans) == 2  # PNG and thumbnail written, no record
    image_id = orphans[0].split("/")[1].split(".")[0]
    assert [row.id for row in gallery.images.list(ALICE).items] == [parent.id]

    # A write may still be in flight for a young object: the default min_age leaves it.
    assert reconcile(gallery.images).clean
    dry = reconcile(gallery.images, dry_run=True, min_age=NOW)
    assert dry.restored == [image_id]
    assert [row.id for row in gallery.images.list(ALICE).items] == [parent.id]

    report = reconcile(gallery.images, min_age=NOW)

    assert report.restored == [image_id]
    assert (report.orphan_objects, report.unrecognised_objects) == ([], [])
    row = gallery.images.get(ALICE, image_id)
    assert (row.prompt, row.seed, row.request_id, row.parent_id, row.tags) == (
        "a crashed villa, <lora:archi:0.6>",
        1234,
        "req-crash",
        parent.id,
        ("night", "villa"),
    )
    assert [(lora.name, lora.weight, lora.hash) for lora in row.loras] == [("archi", 0.6, "ab")]
    assert (row.size_bytes, row.thumbnail_key) == (len(png), f"alice/{image_id}.thumb.webp")
    assert b"".join(gallery.images.file(ALICE, image_id)[1]) == png
    assert [r.id for r in gallery.images.list(ALICE, search="crashed").items] == [image_id]
    assert [r.id for r in gallery.images.lineage(ALICE, parent.id)[1]] == [image_id]
    assert reconcile(gallery.images, min_age=NOW).clean  # nothing left to repair


def test_crash_before_the_thumbnail_write_restores_record_and_thumbnail(
    gallery: GalleryService, local_s3: LocalS3Server, database_url: str, tmp_path: Path
) -> None:
    crash(gallery, local_s3, database_url, tmp_path, crash="before_thumbnail")
    [png_key] = gallery.object_keys()
    image_id = png_key.split("/")[1].removesuffix(".png")

    report = reconcile(gallery.images, min_age=NOW)

    assert report.restored == [image_id]
    assert gallery.object_keys() == [png_key, f"alice/{image_id}.thumb.webp"]
    content_type, _ = gallery.images.file(ALICE, image_id, thumbnail=True)
    assert content_type == "image/webp"


def test_crash_between_record_delete_and_object_delete_finishes_the_delete(
    gallery: GalleryService, local_s3: LocalS3Server, database_url: str, tmp_path: Path
) -> None:
    kept = gallery.images.create(ALICE, a1111_png("kept"), ImageSettings())
    doomed = gallery.images.create(ALICE, a1111_png("doomed"), ImageSettings())

    crash(
        gallery, local_s3, database_url, tmp_path, crash="before_object_removal",
        action="delete", image_id=doomed.id,
    )  # fmt: skip
    assert f"alice/{doomed.id}.png" in gallery.object_keys()
    assert [r.id for r in gallery.images.list(ALICE).items] == [kept.id]

    report = reconcile(gallery.images, min_age=NOW)

    # The user deleted it: its objects go, it is not brought back.
    assert report.orphan_objects == [f"alice/{doomed.id}.png", f"alice/{doomed.id}.thumb.webp"]
    assert report.restored == []
    assert gallery.object_keys() == [f"alice/{kept.id}.png", f"alice/{kept.id}.thumb.webp"]
    assert [r.id for r in gallery.images.list(ALICE).items] == [kept.id]
    assert gallery.images.records.pending_deletions() == []


def test_records_without_png_are_reported_and_removed_only_when_asked(
    gallery: GalleryService,
) -> None:
    lost = gallery.images.create(ALICE, a1111_png("lost"), ImageSettings())
    thumbless = gallery.images.create(ALICE, a1111_png("thumbless"), ImageSettings())
    gallery.store.delete(gallery.bucket, f"alice/{lost.id}.png")
    gallery.store.delete(gallery.bucket, f"alice/{thumbless.id}.thumb.webp")

    report = reconcile(gallery.images, min_age=NOW)

    assert report.orphan_records == [lost.id]
    assert report.thumbnails_rebuilt == [thumbless.id]
    assert gallery.images.get(ALICE, lost.id).id == lost.id  # kept: only reported
    assert f"alice/{thumbless.id}.thumb.webp" in gallery.object_keys()

    report = reconcile(gallery.images, min_age=NOW, remove_orphan_records=True)

    assert report.orphan_records == [lost.id]
    assert [r.id for r in gallery.images.list(ALICE).items] == [thumbless.id]
    assert gallery.object_keys() == [
        f"alice/{thumbless.id}.png",
        f"alice/{thumbless.id}.thumb.webp",
    ]


def test_unreadable_objects_are_reported_and_never_touched(gallery: GalleryService) -> None:
    bogus_png = f"alice/{'ab' * 16}.png"
    lone_thumb = f"alice/{'cd' * 16}.thumb.webp"
    for key, data in (
        ("notes/readme.txt", b"hello"),
        (bogus_png, b"not a png"),
        (lone_thumb, b"x"),
    ):
        gallery.store.put(gallery.bucket, key, data)

    report = reconcile(gallery.images, min_age=NOW)

    assert sorted(report.unrecognised_objects) == [bogus_png, "notes/readme.txt"]
    assert report.orphan_objects == [lone_thumb]  # a thumbnail without its PNG goes
    assert gallery.object_keys() == [bogus_png, "notes/readme.txt"]
    assert gallery.images.list(ALICE).items == ()


def test_reconcile_over_grpc_and_the_cli(
    gallery: GalleryService, local_s3: LocalS3Server, database_url: str, tmp_path: Path
) -> None:
    crash(gallery, local_s3, database_url, tmp_path, crash="before_record")
    [png_key, _] = gallery.object_keys()
    image_id = png_key.split("/")[1].removesuffix(".png")

    dry = gallery.client.reconcile(dry_run=True, min_age=NOW)
    assert list(dry.restored) == [image_id]
    young = sdstack(gallery, "gallery", "reconcile")
    assert young.returncode == 0, young.stderr
    assert "nothing to repair" in young.stdout

    done = sdstack(gallery, "gallery", "reconcile", "--min-age", "0")

    assert done.returncode == 0, done.stderr
    assert f"restored: {image_id} (restored from their PNG)" in done.stdout
    assert gallery.client.get_image(ALICE, image_id).id == image_id
    assert "nothing to repair" in sdstack(gallery, "gallery", "reconcile", "--min-age", "0").stdout


def test_cli_imports_an_a1111_output_folder(gallery: GalleryService, tmp_path: Path) -> None:
    folder = tmp_path / "outputs" / "txt2img-images"
    (folder / "2023-05-01").mkdir(parents=True)
    (folder / "00001-1.png").write_bytes(a1111_png("first cabin", seed=1))
    (folder / "2023-05-01" / "00002-2.png").write_bytes(a1111_png("second cabin", seed=2))
    (folder / "grid.png").write_bytes(b"\x89PNG broken")
    (folder / "notes.txt").write_text("not an image")
    os.utime(folder / "00001-1.png", (1_600_000_000, 1_600_000_000))

    done = sdstack(gallery, "gallery", "import", str(folder), "--recursive", "--owner", ALICE)

    assert done.returncode == 0, done.stderr
    assert "imported 2 of 3 PNG files for alice" in done.stdout
    assert "skipped grid.png: not a PNG image" in done.stdout
    rows = gallery.images.list(ALICE).items
    assert [(r.prompt, r.seed) for r in rows] == [("second cabin", 2), ("first cabin", 1)]
    assert rows[1].created_at.timestamp() == 1_600_000_000
    again = sdstack(gallery, "gallery", "import", str(folder), "--recursive", "--owner", ALICE)
    assert "imported 0 of 3" in again.stdout
    assert "already in the gallery" in again.stdout
    missing = sdstack(gallery, "gallery", "import", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert "FOLDER" in missing.stderr


def sdstack(gallery: GalleryService, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(load_settings()), "SDSTACK_GALLERY_TARGET": gallery.target}
    return subprocess.run(
        [sys.executable, "-m", "sdstack.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
