"""Datasets on a real S3 store: kohya folders and captions, edits, preparation, owners, and
bad uploads refused with a clear error and nothing left behind."""

from __future__ import annotations

import io
import stat
import zipfile
from collections.abc import Iterator

import pytest

from services.common.errors import InvalidArgument, NotFound
from services.common.object_store import DATASETS_BUCKET, ObjectStore
from services.trainer.datasets import DatasetStore
from services.trainer.plan import bucket_resolutions
from tests.trainer_support import dataset_zip, png_bytes, striped_picture

pytestmark = pytest.mark.integration


@pytest.fixture
def datasets(object_store: ObjectStore) -> Iterator[DatasetStore]:
    object_store.ensure_buckets([DATASETS_BUCKET])
    yield DatasetStore(object_store, max_pixels=4096 * 4096, max_bytes=1 << 20, max_files=50)


def _objects(store: ObjectStore) -> set[str]:
    return {entry.key for entry in store.list(DATASETS_BUCKET, prefix="ds/")}


def _zip(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in entries.items():
            bundle.writestr(name, data)
    return out.getvalue()


def test_kohya_folders_set_repeats_and_captions_come_from_txt(datasets: DatasetStore) -> None:
    files = [
        ("set.zip", dataset_zip(count=3, folder="10_office")),
        ("loose.png", png_bytes(striped_picture(5))),
        ("__MACOSX/._loose.png", b"resource fork"),
    ]
    dataset = datasets.create("ada", "offices", 2, files)
    by_path = {image.path: image for image in dataset.images}
    assert set(by_path) == {
        "10_office/img0.png",
        "10_office/img1.png",
        "10_office/img2.png",
        "loose.png",
    }
    assert by_path["10_office/img1.png"].repeats == 10 and by_path["loose.png"].repeats == 2
    assert by_path["10_office/img1.png"].caption == "sks stripes, red"
    assert by_path["loose.png"].caption == ""
    assert dataset.tag_frequency() == [("red", 3), ("sks stripes", 3)]
    assert datasets.get("ada", dataset.id) == dataset
    with pytest.raises(NotFound):
        datasets.get("bob", dataset.id)  # another owner's dataset is simply not there
    assert dataset.id in {d.id for d in datasets.list("ada")}
    assert dataset.id not in {d.id for d in datasets.list("bob")}


def test_edits_and_preparation_persist(datasets: DatasetStore) -> None:
    dataset = datasets.create("ada", "edits", 1, [("set.zip", dataset_zip(count=2))])
    datasets.update_caption("ada", dataset.id, "2_stripes/img0.png", "sofa, lamp")
    prepared = datasets.prepare("ada", dataset.id, 128, "bucket", bucket_resolutions(128, 64, 256))
    assert prepared.prepared_resolution == 128
    assert all((i.width, i.height) == (128, 128) for i in prepared.images)
    reread = datasets.get("ada", dataset.id)
    assert reread.images[0].caption == "sofa, lamp"
    assert datasets.picture(reread.images[0]).size == (128, 128)
    datasets.delete("ada", dataset.id)
    assert not any(key.startswith(f"ds/{dataset.id}/") for key in _objects(datasets.store))


def _symlink_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as bundle:
        info = zipfile.ZipInfo("link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        bundle.writestr(info, "/etc/passwd")
    return out.getvalue()


BAD_UPLOADS = {
    "no pictures": ([("notes.txt", b"just text")], "holds no pictures"),
    "corrupt picture": ([("a.png", b"\x89PNG\r\n\x1a\nnot really")], "a.png"),
    "truncated picture": ([("b.png", png_bytes(striped_picture(1))[:60])], "b.png"),
    "path traversal": (
        [("../../etc/evil.png", png_bytes(striped_picture(1)))],
        "plain relative path",
    ),
    "absolute path": ([("/tmp/evil.png", png_bytes(striped_picture(1)))], "plain relative path"),
    "traversal in zip": ([("x.zip", _zip({"../evil.png": b"x"}))], "plain relative path"),
    "link in zip": ([("x.zip", _symlink_zip())], "is a link"),
    "zip bomb": ([("bomb.zip", _zip({"big.png": bytes(3 << 20)}))], "expands to more than"),
    "not a zip": ([("fake.zip", b"PK\x03\x04 nothing")], "readable zip archive"),
    "unknown type": ([("run.exe", b"MZ")], "only PNG, JPEG and WebP"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_uploads_get_clear_errors_and_store_nothing(case: str, datasets: DatasetStore) -> None:
    files, message = BAD_UPLOADS[case]
    before = _objects(datasets.store)
    with pytest.raises(InvalidArgument) as caught:
        datasets.create("ada", case, 1, files)
    assert message in caught.value.message
    assert _objects(datasets.store) == before
