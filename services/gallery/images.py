"""The gallery's images: files in the `outputs` bucket and records in SQL, behind one
facade that never leaves one without the other.

Write order: object and thumbnail first, then the record; when the record write fails the
objects are removed again. Delete order: record first, then the objects, so a crash
between the two leaves only an orphan object (which reconcile removes), never a record
that points at nothing.
"""

from __future__ import annotations

import io
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from PIL import Image

from services.common.errors import InvalidArgument
from services.common.infotext import parse_infotext, read_png_infotext
from services.common.object_store import OUTPUTS_BUCKET, ObjectStore
from services.gallery.records import ImageRecords, ImageRow, LoraUse, NewImage, Page

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PNG_BYTES = 64 * 1024 * 1024
THUMBNAIL_SIDE = 256
_OWNER = re.compile(r"^[A-Za-z0-9_.@\-]{1,128}$")


@dataclass(frozen=True)
class ImageSettings:
    """What the caller knows of how the image was made (the infotext fills the rest)."""

    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    sampler: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    model_name: str | None = None
    model_hash: str | None = None
    loras: tuple[LoraUse, ...] = ()
    params: dict[str, object] = field(default_factory=dict)


def check_owner(owner: str) -> str:
    if not _OWNER.match(owner or ""):
        raise InvalidArgument("owner", "1-128 characters of A-Z a-z 0-9 _ . @ -")
    return owner


def _decode_png(png: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    if len(png) > MAX_PNG_BYTES:
        raise InvalidArgument("png", f"at most {MAX_PNG_BYTES} bytes")
    infotext = read_png_infotext(png, max_pixels=max_pixels) or ""
    image = Image.open(io.BytesIO(png))
    image.load()
    return image, infotext


def _thumbnail(image: Image.Image) -> bytes:
    thumb = image.convert("RGB")
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    out = io.BytesIO()
    thumb.save(out, format="WEBP", quality=80)
    return out.getvalue()


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class Images:
    """Create, read, list and delete gallery images for one owner at a time."""

    def __init__(self, store: ObjectStore, records: ImageRecords, *, max_pixels: int) -> None:
        self.store = store
        self.records = records
        self.max_pixels = max_pixels

    def create(
        self,
        owner: str,
        png: bytes,
        settings: ImageSettings,
        *,
        request_id: str = "",
        parent_id: str | None = None,
        tags: tuple[str, ...] = (),
    ) -> ImageRow:
        check_owner(owner)
        image, infotext = _decode_png(png, self.max_pixels)
        parsed = parse_infotext(infotext) if infotext else None
        params = parsed.params if parsed else {}
        image_id = uuid.uuid4().hex
        key = f"{owner}/{image_id}.png"
        thumb_key = f"{owner}/{image_id}.thumb.webp"
        stored = self.store.put(OUTPUTS_BUCKET, key, png, content_type="image/png")
        try:
            self.store.put(OUTPUTS_BUCKET, thumb_key, _thumbnail(image), content_type="image/webp")
            record = NewImage(
                id=image_id,
                owner=owner,
                object_key=key,
                thumbnail_key=thumb_key,
                sha256=stored.sha256,
                width=image.width,
                height=image.height,
                prompt=_first(settings.prompt, parsed.prompt if parsed else "", ""),
                negative_prompt=_first(
                    settings.negative_prompt, parsed.negative_prompt if parsed else "", ""
                ),
                seed=_first(settings.seed, _int(params.get("Seed")), 0),
                sampler=_first(settings.sampler, params.get("Sampler"), ""),
                steps=_first(settings.steps, _int(params.get("Steps")), 0),
                cfg_scale=_first(settings.cfg_scale, _float(params.get("CFG scale")), 0.0),
                model_name=_first(settings.model_name, params.get("Model"), ""),
                model_hash=_first(settings.model_hash, params.get("Model hash"), ""),
                loras=settings.loras,
                request_id=request_id,
                parent_id=parent_id or None,
                infotext=infotext,
                params={**params, **settings.params},
                tags=tags,
            )
            return self.records.add(record)
        except BaseException:
            self._remove_objects(key, thumb_key)
            raise

    def get(self, owner: str, image_id: str) -> ImageRow:
        return self.records.get(check_owner(owner), image_id)

    def list(self, owner: str, **filters: object) -> Page:
        return self.records.list(check_owner(owner), **filters)  # type: ignore[arg-type]

    def file(
        self, owner: str, image_id: str, *, thumbnail: bool = False
    ) -> tuple[str, Iterator[bytes]]:
        row = self.get(owner, image_id)
        if thumbnail and row.thumbnail_key:
            return "image/webp", self.store.get(OUTPUTS_BUCKET, row.thumbnail_key)
        return "image/png", self.store.get(OUTPUTS_BUCKET, row.object_key)

    def lineage(
        self, owner: str, image_id: str
    ) -> tuple[tuple[ImageRow, ...], tuple[ImageRow, ...]]:
        return self.records.lineage(check_owner(owner), image_id)

    def delete(self, owner: str, image_id: str) -> None:
        row = self.records.delete(check_owner(owner), image_id)
        self._remove_objects(row.object_key, row.thumbnail_key)

    def _remove_objects(self, *keys: str | None) -> None:
        for key in keys:
            if key:
                try:
                    self.store.delete(OUTPUTS_BUCKET, key)
                except Exception:  # reconcile removes what could not be removed now
                    log.warning("could not remove %s; reconcile will", key, exc_info=True)


def _first(given: T | None, parsed: T | None, default: T) -> T:
    if given not in (None, ""):
        return given  # type: ignore[return-value]
    if parsed not in (None, ""):
        return parsed  # type: ignore[return-value]
    return default
