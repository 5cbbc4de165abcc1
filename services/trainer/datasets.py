"""Datasets in the `datasets` bucket (the trainer is its one writer).

A dataset is its pictures and a manifest, `ds/<id>/manifest.json`, written last: pictures as
uploaded under `ds/<id>/originals/<path>`, prepared ones under `ds/<id>/prepared/<path>`.
The manifest holds the owner, each image's caption, size and repeats, and how it was
prepared; an upload that fails half-way has no manifest and is removed, so it never
appears. Another owner's dataset behaves exactly like a missing one.

Uploads are checked before anything is stored: paths (no traversal, no links, no bombs:
`extract_zip` for archives), every picture fully decoded (`decode_image`: corrupt, truncated
and decompression-bomb files are refused by name), captions as UTF-8 text.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from PIL import Image

from services.common.archives import extract_zip, safe_member_path
from services.common.errors import InvalidArgument, NotFound
from services.common.images import decode_image
from services.common.object_store import DATASETS_BUCKET, ObjectStore
from services.trainer import fitting
from services.trainer.tags import MAX_CAPTION_CHARS, TagEdit, merge_tags, tag_frequency

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
CAPTION_SUFFIX = ".txt"
ZIP_SUFFIX = ".zip"
MAX_NAME_CHARS = 100
MAX_REPEATS = 1000
THUMBNAIL_SIDE = 128
_CONCEPT = re.compile(r"^(\d+)_(.+)$")
_OWNER = re.compile(r"^[A-Za-z0-9_.@\-]{1,128}$")
_ID = re.compile(r"^[0-9a-f]{32}$")
_CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


@dataclass(frozen=True)
class DatasetImage:
    path: str
    caption: str
    width: int
    height: int
    repeats: int
    key: str  # object key of the picture to train on (original or prepared)


@dataclass(frozen=True)
class Dataset:
    id: str
    owner: str
    name: str
    created_at: datetime
    images: tuple[DatasetImage, ...]
    prepared_resolution: int = 0
    prepared_crop: str = ""

    def tag_frequency(self) -> list[tuple[str, int]]:
        return tag_frequency(image.caption for image in self.images)

    def folder_frequencies(self) -> dict[str, dict[str, int]]:
        """kohya's `ss_tag_frequency`: folder → tag → images holding it."""
        folders: dict[str, list[str]] = {}
        for image in self.images:
            folder = str(PurePosixPath(image.path).parent)
            folders.setdefault(folder, []).append(image.caption)
        return {name: dict(tag_frequency(captions)) for name, captions in folders.items()}

    def folder_counts(self) -> dict[str, dict[str, int]]:
        """kohya's `ss_dataset_dirs`: folder → {n_repeats, img_count}."""
        dirs: dict[str, dict[str, int]] = {}
        for image in self.images:
            entry = dirs.setdefault(
                str(PurePosixPath(image.path).parent), {"n_repeats": image.repeats, "img_count": 0}
            )
            entry["img_count"] += 1
        return dirs


@dataclass
class Upload:
    """Files of one CreateDataset call as they arrive, spooled to a temporary folder."""

    root: Path
    max_bytes: int
    max_files: int
    files: list[PurePosixPath] = field(default_factory=list)
    received: int = 0

    def add(self, path: str, data: bytes) -> None:
        name = safe_member_path(path.strip(), "file.path")
        self.received += len(data)
        if self.received > self.max_bytes:
            raise InvalidArgument("files", f"the upload is larger than {self.max_bytes >> 20} MiB")
        if _ignored(name):
            return
        if name.suffix.lower() == ZIP_SUFFIX:
            self._unzip(name, data)
            return
        self._keep(name, data)

    def _keep(self, name: PurePosixPath, data: bytes) -> None:
        if str(name).lower() in {str(f).lower() for f in self.files}:
            raise InvalidArgument("file.path", f"{name} appears twice")
        if len(self.files) >= self.max_files:
            raise InvalidArgument("files", f"at most {self.max_files} files per dataset")
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.files.append(name)

    def _unzip(self, name: PurePosixPath, data: bytes) -> None:
        archive = self.root.parent / f"upload-{uuid.uuid4().hex}.zip"
        archive.write_bytes(data)
        unpacked = self.root.parent / f"unpacked-{uuid.uuid4().hex}"
        try:
            entries = extract_zip(
                archive,
                unpacked,
                field_name=f"file {name}",
                max_bytes=self.max_bytes - self.received,
                max_files=self.max_files,
            )
            for entry in entries:
                if _ignored(entry):
                    continue
                self._keep(entry, (unpacked / entry).read_bytes())
        finally:
            archive.unlink(missing_ok=True)
            shutil.rmtree(unpacked, ignore_errors=True)


def _ignored(path: PurePosixPath) -> bool:
    """Files archivers and file browsers add: `__MACOSX/`, `.DS_Store`, `._x`, `Thumbs.db`."""
    return any(p.startswith(".") or p == "__MACOSX" for p in path.parts) or path.name == "Thumbs.db"


def check_owner(owner: str) -> str:
    if not _OWNER.match(owner):
        raise InvalidArgument("owner", "is required: 1-128 of A-Z a-z 0-9 _ . @ -")
    return owner


def check_dataset_id(dataset_id: str, field_name: str = "dataset_id") -> str:
    if not _ID.match(dataset_id):
        raise InvalidArgument(field_name, "must be a dataset id (32 hex)")
    return dataset_id


def repeats_of(path: PurePosixPath, default: int) -> int:
    """Repeats from the nearest `N_concept` folder above the file (kohya), else `default`."""
    for folder in reversed(path.parent.parts):
        match = _CONCEPT.match(folder)
        if match:
            repeats = int(match.group(1))
            if not 1 <= repeats <= MAX_REPEATS:
                raise InvalidArgument(
                    "file.path", f"folder {folder!r}: repeats must be in 1..{MAX_REPEATS}"
                )
            return repeats
    return default


class DatasetStore:
    """Create, read and edit datasets; every method checks the owner first."""

    def __init__(
        self, store: ObjectStore, *, max_pixels: int, max_bytes: int, max_files: int
    ) -> None:
        self.store = store
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # -- creating ---------------------------------------------------------------------------

    def create(
        self, owner: str, name: str, default_repeats: int, files: Iterable[tuple[str, bytes]]
    ) -> Dataset:
        """Checks and stores an upload: `files` are (path, bytes) pairs, zips unpacked."""
        check_owner(owner)
        name = name.strip()
        if not 1 <= len(name) <= MAX_NAME_CHARS:
            raise InvalidArgument("name", f"is required: 1-{MAX_NAME_CHARS} characters")
        default_repeats = default_repeats or 1
        if not 1 <= default_repeats <= MAX_REPEATS:
            raise InvalidArgument("default_repeats", f"must be in 1..{MAX_REPEATS}")
        with tempfile.TemporaryDirectory(prefix="sdstack-dataset-") as folder:
            upload = Upload(Path(folder) / "files", self.max_bytes, self.max_files)
            for path, data in files:
                upload.add(path, data)
            images = self._read_upload(upload, default_repeats)
            dataset = Dataset(
                id=uuid.uuid4().hex,
                owner=owner,
                name=name,
                created_at=datetime.now(UTC),
                images=tuple(images),
            )
            return self._store_new(dataset, upload.root)

    def _read_upload(self, upload: Upload, default_repeats: int) -> list[DatasetImage]:
        by_name = {str(p).lower(): p for p in upload.files}
        images = []
        for path in sorted(upload.files):
            suffix = path.suffix.lower()
            if suffix == CAPTION_SUFFIX:
                continue
            if suffix not in IMAGE_SUFFIXES:
                raise InvalidArgument(
                    "file.path", f"{path}: only PNG, JPEG and WebP pictures, .txt captions and .zip"
                )
            data = (upload.root / path).read_bytes()
            picture = decode_image(data, f"file {path}", max_pixels=self.max_pixels)
            caption_path = by_name.get(str(path.with_suffix(CAPTION_SUFFIX)).lower())
            caption = (
                _read_caption(upload.root / caption_path, caption_path) if caption_path else ""
            )
            images.append(
                DatasetImage(
                    path=str(path),
                    caption=caption,
                    width=picture.width,
                    height=picture.height,
                    repeats=repeats_of(path, default_repeats),
                    key="",
                )
            )
        if not images:
            raise InvalidArgument("files", "the dataset holds no pictures (PNG, JPEG or WebP)")
        return images

    def _store_new(self, dataset: Dataset, root: Path) -> Dataset:
        stored = []
        try:
            for image in dataset.images:
                key = f"{_prefix(dataset.id)}originals/{image.path}"
                content_type = _CONTENT_TYPES.get(PurePosixPath(image.path).suffix.lower())
                self.store.put_file(
                    DATASETS_BUCKET,
                    key,
                    root / image.path,
                    content_type=content_type or "image/webp",
                )
                stored.append(replace(image, key=key))
            dataset = replace(dataset, images=tuple(stored))
            self._write_manifest(dataset)
        except BaseException:
            self._remove_objects(dataset.id)
            raise
        return dataset

    # -- reading ----------------------------------------------------------------------------

    def get(self, owner: str, dataset_id: str) -> Dataset:
        check_owner(owner)
        check_dataset_id(dataset_id)
        try:
            raw = self.store.get_bytes(DATASETS_BUCKET, f"{_prefix(dataset_id)}manifest.json")
        except NotFound:
            raise NotFound("dataset", dataset_id) from None
        dataset = _from_json(raw)
        if dataset.owner != owner:
            raise NotFound("dataset", dataset_id)
        return dataset

    def list(self, owner: str) -> list[Dataset]:
        check_owner(owner)
        found = []
        for entry in self.store.list(DATASETS_BUCKET, prefix="ds/", recursive=False):
            dataset_id = entry.key.removeprefix("ds/").rstrip("/")
            if not _ID.match(dataset_id):
                continue
            try:
                found.append(self.get(owner, dataset_id))
            except NotFound:
                continue
        return sorted(found, key=lambda d: d.created_at, reverse=True)

    def picture(self, image: DatasetImage) -> Image.Image:
        """The picture to train on, decoded (it was checked on upload)."""
        data = self.store.get_bytes(DATASETS_BUCKET, image.key)
        return decode_image(data, image.path, max_pixels=self.max_pixels)

    def thumbnail(self, image: DatasetImage) -> bytes:
        picture = self.picture(image)
        picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        out = io.BytesIO()
        picture.save(out, format="WEBP", quality=80)
        return out.getvalue()

    def delete(self, owner: str, dataset_id: str) -> None:
        self.get(owner, dataset_id)
        with self._lock(dataset_id):
            self.store.delete(DATASETS_BUCKET, f"{_prefix(dataset_id)}manifest.json")
            self._remove_objects(dataset_id)

    # -- editing ----------------------------------------------------------------------------

    def update_caption(self, owner: str, dataset_id: str, path: str, caption: str) -> DatasetImage:
        if len(caption) > MAX_CAPTION_CHARS:
            raise InvalidArgument("caption", f"must be at most {MAX_CAPTION_CHARS} characters")
        with self._lock(dataset_id):
            dataset = self.get(owner, dataset_id)
            images = list(dataset.images)
            index = _index_of(images, path, "path")
            images[index] = replace(images[index], caption=caption.strip())
            self._write_manifest(replace(dataset, images=tuple(images)))
            return images[index]

    def edit_tags(self, owner: str, dataset_id: str, paths: list[str], edit: TagEdit) -> Dataset:
        for tag in [*edit.add, *edit.remove, *edit.replace, *edit.replace.values()]:
            if not tag.strip() or "," in tag or len(tag) > 200:
                raise InvalidArgument("tags", f"{tag!r}: a tag is 1-200 characters without commas")
        if "," in edit.trigger_word or len(edit.trigger_word) > 200:
            raise InvalidArgument("trigger_word", "at most 200 characters, without commas")
        with self._lock(dataset_id):
            dataset = self.get(owner, dataset_id)
            images = list(dataset.images)
            chosen = {_index_of(images, p, "paths") for p in paths} if paths else range(len(images))
            for index in chosen:
                caption = edit.apply(images[index].caption)
                if len(caption) > MAX_CAPTION_CHARS:
                    raise InvalidArgument("tags", f"{images[index].path}: caption grows too long")
                images[index] = replace(images[index], caption=caption)
            dataset = replace(dataset, images=tuple(images))
            self._write_manifest(dataset)
            return dataset

    def set_captions(
        self, owner: str, dataset_id: str, captions: dict[str, list[str]], overwrite: bool
    ) -> Dataset:
        """Captions from a tagger: path → tags, merged into or replacing the captions."""
        with self._lock(dataset_id):
            dataset = self.get(owner, dataset_id)
            images = []
            for image in dataset.images:
                found = captions.get(image.path)
                if found is not None:
                    base = "" if overwrite else image.caption
                    image = replace(image, caption=merge_tags(base, found)[:MAX_CAPTION_CHARS])
                images.append(image)
            dataset = replace(dataset, images=tuple(images))
            self._write_manifest(dataset)
            return dataset

    def prepare(
        self,
        owner: str,
        dataset_id: str,
        resolution: int,
        crop: str,
        buckets: list[tuple[int, int]],
    ) -> Dataset:
        """Fits every original to `resolution` (`crop`: center, subject or bucket) and stores
        the results as PNG; later preparations start again from the originals."""
        with self._lock(dataset_id):
            dataset = self.get(owner, dataset_id)
            prepared = []
            for image in dataset.images:
                original = replace(image, key=f"{_prefix(dataset_id)}originals/{image.path}")
                picture = _fit(self.picture(original), resolution, crop, buckets)
                out = io.BytesIO()
                picture.save(out, format="PNG")
                key = f"{_prefix(dataset_id)}prepared/{image.path}"
                self.store.put(DATASETS_BUCKET, key, out.getvalue(), content_type="image/png")
                prepared.append(replace(image, key=key, width=picture.width, height=picture.height))
            dataset = replace(
                dataset,
                images=tuple(prepared),
                prepared_resolution=resolution,
                prepared_crop=crop,
            )
            self._write_manifest(dataset)
            return dataset

    # -- internals --------------------------------------------------------------------------

    def _lock(self, dataset_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(dataset_id, threading.Lock())

    def _write_manifest(self, dataset: Dataset) -> None:
        self.store.put(
            DATASETS_BUCKET,
            f"{_prefix(dataset.id)}manifest.json",
            _to_json(dataset),
            content_type="application/json",
        )

    def _remove_objects(self, dataset_id: str) -> None:
        for entry in self.store.list(DATASETS_BUCKET, prefix=_prefix(dataset_id)):
            self.store.delete(DATASETS_BUCKET, entry.key)


def _fit(
    picture: Image.Image, resolution: int, crop: str, buckets: list[tuple[int, int]]
) -> Image.Image:
    size = (resolution, resolution)
    if crop == "bucket":
        return fitting.fit_bucket(picture, buckets)
    if crop == "subject":
        return fitting.fit_subject(picture, size)
    return fitting.fit_center(picture, size)


def _prefix(dataset_id: str) -> str:
    return f"ds/{dataset_id}/"


def _index_of(images: list[DatasetImage], path: str, field_name: str) -> int:
    for index, image in enumerate(images):
        if image.path == path:
            return index
    raise InvalidArgument(field_name, f"{path!r} is not an image of this dataset")


def _read_caption(file: Path, path: PurePosixPath) -> str:
    try:
        text = file.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidArgument("file.path", f"{path}: captions must be UTF-8 text") from None
    text = " ".join(text.split())
    if len(text) > MAX_CAPTION_CHARS:
        raise InvalidArgument("file.path", f"{path}: at most {MAX_CAPTION_CHARS} characters")
    return text


def _to_json(dataset: Dataset) -> bytes:
    data = asdict(dataset)
    data["created_at"] = dataset.created_at.isoformat()
    return json.dumps(data, ensure_ascii=False, indent=1).encode()


def _from_json(raw: bytes) -> Dataset:
    data = json.loads(raw)
    return Dataset(
        id=data["id"],
        owner=data["owner"],
        name=data["name"],
        created_at=datetime.fromisoformat(data["created_at"]),
        images=tuple(DatasetImage(**image) for image in data["images"]),
        prepared_resolution=data.get("prepared_resolution", 0),
        prepared_crop=data.get("prepared_crop", ""),
    )
