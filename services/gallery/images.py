"""The gallery's images: files in the `outputs` bucket and records in SQL, behind one
facade that never leaves one without the other.

Write order: object and thumbnail first, then the record; when the record write fails the
objects are removed again. The PNG object carries what the record holds beyond its own
A1111 infotext (request id, parent, tags, LoRAs, …) as user metadata, so a crash between
the object write and the record write loses nothing: `reconcile` makes the record again
from the object alone. Delete order: record first (leaving its keys in
`pending_deletions` in the same transaction), then the objects, so a crash between the two
leaves objects that reconcile knows to remove, never a record that points at nothing.

Object keys: `{owner}/{image id}.png` and `{owner}/{image id}.thumb.webp`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import json
import logging
import re
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from PIL import Image
from pydantic import ValidationError

from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.common.generation import GenerationRequest
from services.common.generation.infotext import request_from_infotext
from services.common.infotext import Infotext, parse_infotext, read_png_infotext
from services.common.object_store import OUTPUTS_BUCKET, ObjectStore
from services.gallery.records import (
    ImageRecords,
    ImageRow,
    LoraUse,
    NewImage,
    Page,
    check_owner,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PNG_BYTES = 64 * 1024 * 1024
THUMBNAIL_SIDE = 256
DEFAULT_URL_EXPIRY = timedelta(hours=1)
MAX_URL_EXPIRY = timedelta(days=7)
RECORD_META = "sdstack-record"
_MAX_META_CHARS = 2048
_KEY = re.compile(
    r"^(?P<owner>[A-Za-z0-9_.@\-]{1,128})/(?P<id>[0-9a-f]{32})\.(?P<kind>png|thumb\.webp)$"
)


@dataclass(frozen=True)
class ImageSettings:
    """What the caller knows of how the image was made; the infotext tells the rest."""

    generation: GenerationRequest | None = None
    model_hash: str | None = None


@dataclass(frozen=True)
class ObjectKey:
    """A key in the gallery's layout: whose image, which one, PNG or thumbnail."""

    owner: str
    image_id: str
    thumbnail: bool

    @classmethod
    def parse(cls, key: str) -> ObjectKey | None:
        match = _KEY.match(key)
        if match is None:
            return None
        return cls(match["owner"], match["id"], match["kind"] != "png")


def png_key(owner: str, image_id: str) -> str:
    return f"{owner}/{image_id}.png"


def thumbnail_key(owner: str, image_id: str) -> str:
    return f"{owner}/{image_id}.thumb.webp"


def _decode_png(png: bytes, max_pixels: int, field_name: str = "png") -> tuple[Image.Image, str]:
    """The decoded image and its infotext ("" when none); InvalidArgument naming `field_name`
    for anything that is not a whole PNG within the limits."""
    if not png:
        raise InvalidArgument(field_name, "must not be empty")
    if len(png) > MAX_PNG_BYTES:
        raise InvalidArgument(field_name, f"must be at most {MAX_PNG_BYTES} bytes")
    try:
        infotext = read_png_infotext(png, max_pixels=max_pixels) or ""
        image = Image.open(io.BytesIO(png), formats=["PNG"])
        image.load()
    except InvalidArgument as error:
        raise InvalidArgument(field_name, error.violations[0].rule) from None
    except (OSError, ValueError, SyntaxError) as error:
        raise InvalidArgument(field_name, f"is corrupt or truncated ({error})") from None
    return image, infotext


def _thumbnail(image: Image.Image) -> bytes:
    """WebP, longest side 256; transparency kept."""
    thumb = image.convert("RGBA" if "A" in image.getbands() else "RGB")
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


def _record_metadata(record: NewImage) -> dict[str, str]:
    """What the record holds beyond the PNG's own infotext, packed for S3 user metadata
    (printable ASCII, ≤ 2 KiB): zlib-compressed JSON in base64. Prompts are dropped first
    when too long (the infotext holds them), then tags."""
    facts: dict[str, Any] = {
        "request_id": record.request_id,
        "parent_id": record.parent_id,
        "seed": record.seed,
        "sampler": record.sampler,
        "steps": record.steps,
        "cfg_scale": record.cfg_scale,
        "model_name": record.model_name,
        "model_hash": record.model_hash,
        "vae_name": record.vae_name,
        "loras": [lora.to_json() for lora in record.loras if isinstance(lora, LoraUse)],
        "tags": list(record.tags),
        "prompt": record.prompt,
        "negative_prompt": record.negative_prompt,
        "generation": record.generation,
    }
    for drop in ((), ("prompt", "negative_prompt"), ("tags",), ("generation",)):
        for name in drop:
            facts.pop(name, None)
        packed = base64.b64encode(zlib.compress(json.dumps(facts).encode(), 9)).decode()
        if len(packed) <= _MAX_META_CHARS:
            return {RECORD_META: packed}
    return {}


def _read_record_metadata(metadata: dict[str, str]) -> dict[str, Any]:
    packed = metadata.get(RECORD_META, "")
    if not packed:
        return {}
    try:
        facts = json.loads(zlib.decompress(base64.b64decode(packed)))
    except (binascii.Error, zlib.error, ValueError):
        log.warning("unreadable %s metadata ignored", RECORD_META)
        return {}
    return facts if isinstance(facts, dict) else {}


class Images:
    """Create, read, list, change and delete gallery images, one owner at a time."""

    def __init__(
        self,
        store: ObjectStore,
        records: ImageRecords,
        *,
        max_pixels: int,
        bucket: str = OUTPUTS_BUCKET,
    ) -> None:
        self.store = store
        self.records = records
        self.max_pixels = max_pixels
        self.bucket = bucket

    # -- writing

    def create(
        self,
        owner: str,
        png: bytes,
        settings: ImageSettings,
        *,
        request_id: str = "",
        parent_id: str | None = None,
        tags: Sequence[str] = (),
        created_at: datetime | None = None,
    ) -> ImageRow:
        """Store the PNG, its thumbnail and its record: all three or none."""
        check_owner(owner)
        if parent_id:
            self.records.get(owner, parent_id)  # NotFound before anything is written
        image, infotext = _decode_png(png, self.max_pixels)
        image_id = uuid.uuid4().hex
        record = _new_record(owner, image_id, png, image, infotext, settings)
        record = replace(
            record,
            request_id=request_id,
            parent_id=parent_id or None,
            tags=tuple(tags),
            created_at=created_at,
        )
        return self._write(record, png, image)

    def import_png(
        self, owner: str, filename: str, png: bytes, *, created_at: datetime | None = None
    ) -> ImageRow:
        """An A1111 output file made a record, its parameters parsed from the infotext.

        Refused (InvalidArgument on `filename`): not a PNG, no `parameters` chunk, or the
        same bytes already in the owner's gallery (importing a folder twice adds nothing).
        """
        check_owner(owner)
        label = filename or "png"
        image, infotext = _decode_png(png, self.max_pixels, label)
        if not infotext.strip():
            raise InvalidArgument(label, "has no A1111 `parameters` chunk")
        sha256 = hashlib.sha256(png).hexdigest()
        existing = self.records.find_by_sha256(owner, sha256)
        if existing is not None:
            raise InvalidArgument(label, f"is already in the gallery as {existing.id}")
        record = _new_record(owner, uuid.uuid4().hex, png, image, infotext, ImageSettings())
        return self._write(replace(record, created_at=created_at), png, image)

    def _write(self, record: NewImage, png: bytes, image: Image.Image) -> ImageRow:
        key, thumb_key = record.object_key, record.thumbnail_key or ""
        self.store.put(
            self.bucket, key, png, content_type="image/png", metadata=_record_metadata(record)
        )
        try:
            self.store.put(self.bucket, thumb_key, _thumbnail(image), content_type="image/webp")
            return self.records.add(record)
        except BaseException:
            self._remove_objects(key, thumb_key)
            raise

    def update(
        self,
        owner: str,
        image_id: str,
        *,
        favourite: bool | None = None,
        tags: Sequence[str] | None = None,
        board_ids: Sequence[str] | None = None,
    ) -> ImageRow:
        return self.records.update(
            check_owner(owner), image_id, favourite=favourite, tags=tags, board_ids=board_ids
        )

    def delete(self, owner: str, image_id: str) -> None:
        """Record first, then the PNG and thumbnail; children keep existing."""
        row = self.records.delete(check_owner(owner), image_id)
        removed = self._remove_objects(row.object_key, row.thumbnail_key)
        self.records.finish_deletions(removed)

    # -- reading

    def get(self, owner: str, image_id: str) -> ImageRow:
        return self.records.get(check_owner(owner), image_id)

    def list(self, owner: str, **filters: Any) -> Page:
        return self.records.list(check_owner(owner), **filters)

    def file(
        self, owner: str, image_id: str, *, thumbnail: bool = False
    ) -> tuple[str, Iterator[bytes]]:
        """Content type and bytes of the PNG, or of its WebP thumbnail."""
        row = self.get(owner, image_id)
        if thumbnail and row.thumbnail_key:
            return "image/webp", self.store.get(self.bucket, row.thumbnail_key)
        return "image/png", self.store.get(self.bucket, row.object_key)

    def url(
        self,
        owner: str,
        image_id: str,
        *,
        thumbnail: bool = False,
        expires_in: timedelta = DEFAULT_URL_EXPIRY,
    ) -> tuple[str, datetime]:
        """A presigned GET URL of the file in the object store, and when it stops working."""
        if not timedelta(seconds=1) <= expires_in <= MAX_URL_EXPIRY:
            raise InvalidArgument("expires_in", "must be between 1 second and 7 days")
        row = self.get(owner, image_id)
        key = row.thumbnail_key if thumbnail and row.thumbnail_key else row.object_key
        expires_at = datetime.now(UTC) + expires_in
        return self.store.presigned_get_url(self.bucket, key, expires_in), expires_at

    def lineage(
        self, owner: str, image_id: str
    ) -> tuple[tuple[ImageRow, ...], tuple[ImageRow, ...]]:
        return self.records.lineage(check_owner(owner), image_id)

    # -- repairs (reconcile)

    def restore(self, key: ObjectKey, created_at: datetime, *, dry_run: bool = False) -> None:
        """Make the record of a PNG whose record write never happened, from the PNG alone
        (its infotext and the record metadata written with it); the thumbnail too when it
        is missing. InvalidArgument when the object is not a PNG the gallery can read."""
        png_name = png_key(key.owner, key.image_id)
        info = self.store.stat(self.bucket, png_name)
        png = self.store.get_bytes(self.bucket, png_name)
        image, infotext = _decode_png(png, self.max_pixels, png_name)
        if self.records.exists(key.image_id):
            raise AlreadyExists(f"a record with id {key.image_id} exists under another key")
        record = _restored_record(key, image, infotext, png, info.metadata, created_at)
        if record.parent_id and not self._owns(key.owner, record.parent_id):
            record = replace(record, parent_id=None)  # the parent was deleted meanwhile
        if dry_run:
            return
        thumb = thumbnail_key(key.owner, key.image_id)
        if not self.store.exists(self.bucket, thumb):
            self.store.put(self.bucket, thumb, _thumbnail(image), content_type="image/webp")
        self.records.add(record)

    def rebuild_thumbnail(self, row: ImageRow) -> None:
        """Write the missing thumbnail of a record from its PNG."""
        image, _ = _decode_png(self.store.get_bytes(self.bucket, row.object_key), self.max_pixels)
        key = row.thumbnail_key or thumbnail_key(row.owner, row.id)
        self.store.put(self.bucket, key, _thumbnail(image), content_type="image/webp")
        if row.thumbnail_key != key:
            self.records.set_thumbnail_key(row.owner, row.id, key)

    def _owns(self, owner: str, image_id: str) -> bool:
        try:
            self.records.get(owner, image_id)
        except NotFound:
            return False
        return True

    def _remove_objects(self, *keys: str | None) -> list[str]:
        """Remove objects, best effort; returns the keys that are gone."""
        removed = []
        for key in keys:
            if key:
                try:
                    self.store.delete(self.bucket, key)
                    removed.append(key)
                except Exception:  # reconcile removes what could not be removed now
                    log.warning("could not remove %s; reconcile will", key, exc_info=True)
        return removed


def _new_record(
    owner: str,
    image_id: str,
    png: bytes,
    image: Image.Image,
    infotext: str,
    settings: ImageSettings,
) -> NewImage:
    """The record of a PNG: what made it as the caller says, else as its infotext says; the
    searchable columns are read from that."""
    parsed = parse_infotext(infotext) if infotext.strip() else Infotext("")
    params = parsed.params
    generation = settings.generation
    if generation is None and infotext.strip():
        generation = request_from_infotext(parsed)
    known = settings.generation.settings if settings.generation else None
    return NewImage(
        id=image_id,
        owner=owner,
        object_key=png_key(owner, image_id),
        thumbnail_key=thumbnail_key(owner, image_id),
        sha256=hashlib.sha256(png).hexdigest(),
        size_bytes=len(png),
        width=image.width,
        height=image.height,
        prompt=known.prompt if known else parsed.prompt,
        negative_prompt=known.negative_prompt if known else parsed.negative_prompt,
        seed=known.seed if known else _first(None, _int(params.get("Seed")), 0),
        sampler=known.sampler if known else params.get("Sampler", ""),
        steps=known.steps if known else _first(None, _int(params.get("Steps")), 0),
        cfg_scale=known.cfg_scale if known else _first(None, _float(params.get("CFG scale")), 0.0),
        model_name=known.model if known else params.get("Model", ""),
        model_hash=_first(settings.model_hash, params.get("Model hash"), ""),
        vae_name=(known.vae or None) if known else params.get("VAE"),
        loras=tuple(
            LoraUse(lora.name, lora.weight, lora.short_hash)
            for lora in (generation.settings.loras if generation else ())
        ),
        infotext=infotext,
        params=params,
        generation=generation.model_dump(mode="json", include={"settings", "task"})
        if generation
        else None,
    )


def _restored_record(
    key: ObjectKey,
    image: Image.Image,
    infotext: str,
    png: bytes,
    metadata: dict[str, str],
    created_at: datetime,
) -> NewImage:
    facts = _read_record_metadata(metadata)
    stored = facts.get("generation")
    generation = None
    if isinstance(stored, dict):
        with contextlib.suppress(ValidationError):
            generation = GenerationRequest.model_validate(stored)
    settings = ImageSettings(generation=generation, model_hash=facts.get("model_hash"))
    record = _new_record(key.owner, key.image_id, png, image, infotext, settings)
    columns = {name: facts[name] for name in _RESTORED_COLUMNS if facts.get(name) is not None}
    if facts.get("loras") is not None:
        columns["loras"] = tuple(LoraUse.from_json(lora) for lora in facts["loras"])
    return replace(
        record,
        **columns,
        request_id=str(facts.get("request_id") or ""),
        parent_id=facts.get("parent_id") or None,
        tags=tuple(facts.get("tags") or ()),
        created_at=created_at,
    )


_RESTORED_COLUMNS = (
    "prompt",
    "negative_prompt",
    "seed",
    "sampler",
    "steps",
    "cfg_scale",
    "model_name",
    "vae_name",
)
"""The record's columns its object's metadata keeps, restored as they were."""


def _first(given: T | None, parsed: T | None, default: T) -> T:
    if given not in (None, ""):
        return given  # type: ignore[return-value]
    if parsed not in (None, ""):
        return parsed  # type: ignore[return-value]
    return default
