"""Repairs what a crash left between the gallery's object writes and record writes.

What users expect, and what this does (every owner's images, an operator's command):

- a PNG with no record (the process died after writing the object, before the record):
  the image was made and the user wants it, so the record is made again from the PNG (its
  A1111 infotext and the record metadata written with it: request id, parent, tags,
  LoRAs). Nothing is lost; its `created_at` is the object's time;
- objects of a deleted record (the process died between the two deletes): removed, as
  the user asked. `pending_deletions` tells them apart from the case above;
- a thumbnail whose PNG is gone: removed; a record whose thumbnail is missing: the
  thumbnail is made again;
- a record whose PNG is missing (never left by a crash: objects are written first and
  removed last, but a bucket can be emptied by hand): reported, and removed only when
  asked, so an object store misconfigured for a moment can never empty the gallery;
- objects the gallery cannot read (keys outside its layout, files that are not PNGs):
  reported, never touched.

Objects younger than `min_age` are left alone: their record may be being written now.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.common.object_store import ObjectInfo
from services.gallery.images import Images, ObjectKey, png_key

log = logging.getLogger(__name__)

DEFAULT_MIN_AGE = timedelta(seconds=60)
MAX_MIN_AGE = timedelta(days=7)


@dataclass
class ReconcileReport:
    """What was repaired (or, in a dry run, would be)."""

    orphan_objects: list[str] = field(default_factory=list)
    orphan_records: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    thumbnails_rebuilt: list[str] = field(default_factory=list)
    unrecognised_objects: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not any(vars(self).values())


@dataclass(frozen=True)
class _Record:
    image_id: str
    owner: str
    object_key: str
    thumbnail_key: str | None


def reconcile(
    images: Images,
    *,
    dry_run: bool = False,
    remove_orphan_records: bool = False,
    min_age: timedelta = DEFAULT_MIN_AGE,
) -> ReconcileReport:
    """Compare the `outputs` bucket with the records and repair the difference."""
    if not timedelta(0) <= min_age <= MAX_MIN_AGE:
        raise InvalidArgument("min_age", "must be between 0 and 7 days")
    report = ReconcileReport()
    pending = set(images.records.pending_deletions())
    # Records before the listing: a record read here has its object in the listing below.
    records = [_Record(*row) for row in images.records.stored_keys()]
    objects = {info.key: info for info in images.store.list(images.bucket)}
    _finish_deletions(images, pending, objects, report, dry_run)
    referenced = {r.object_key for r in records} | {r.thumbnail_key for r in records}
    cutoff = datetime.now(UTC) - min_age
    unreferenced = [
        info
        for key, info in sorted(objects.items())
        if key not in referenced and key not in pending and _older(info, cutoff)
    ]
    _restore_pngs(images, unreferenced, report, dry_run)
    _remove_lone_thumbnails(images, unreferenced, set(objects), report, dry_run)
    _check_records(images, records, set(objects), report, dry_run, remove_orphan_records)
    log.info("reconcile%s: %s", " (dry run)" if dry_run else "", report)
    return report


def _older(info: ObjectInfo, cutoff: datetime) -> bool:
    return info.last_modified is None or info.last_modified <= cutoff


def _finish_deletions(
    images: Images,
    pending: set[str],
    objects: dict[str, ObjectInfo],
    report: ReconcileReport,
    dry_run: bool,
) -> None:
    """Objects of deleted records: remove them, then forget the pending deletions."""
    present = sorted(key for key in pending if key in objects)
    report.orphan_objects.extend(present)
    if not dry_run:
        for key in present:
            images.store.delete(images.bucket, key)
        images.records.finish_deletions(pending)


def _restore_pngs(
    images: Images, unreferenced: list[ObjectInfo], report: ReconcileReport, dry_run: bool
) -> None:
    for info in unreferenced:
        key = ObjectKey.parse(info.key)
        if key is None:
            report.unrecognised_objects.append(info.key)
            continue
        if key.thumbnail:
            continue
        created_at = info.last_modified or datetime.now(UTC)
        try:
            images.restore(key, created_at, dry_run=dry_run)
        except (InvalidArgument, AlreadyExists, NotFound) as error:
            log.warning("cannot restore %s: %s", info.key, error.message)
            report.unrecognised_objects.append(info.key)
            continue
        report.restored.append(key.image_id)


def _remove_lone_thumbnails(
    images: Images,
    unreferenced: list[ObjectInfo],
    present: set[str],
    report: ReconcileReport,
    dry_run: bool,
) -> None:
    """Thumbnails are derived data: without their PNG (and record) they go."""
    for info in unreferenced:
        key = ObjectKey.parse(info.key)
        if key is None or not key.thumbnail or png_key(key.owner, key.image_id) in present:
            continue
        report.orphan_objects.append(info.key)
        if not dry_run:
            images.store.delete(images.bucket, info.key)


def _check_records(
    images: Images,
    records: list[_Record],
    present: set[str],
    report: ReconcileReport,
    dry_run: bool,
    remove_orphan_records: bool,
) -> None:
    for record in records:
        if record.object_key not in present:
            report.orphan_records.append(record.image_id)
            if remove_orphan_records and not dry_run:
                _delete_quietly(images, record)
        elif record.thumbnail_key is None or record.thumbnail_key not in present:
            report.thumbnails_rebuilt.append(record.image_id)
            if not dry_run:
                images.rebuild_thumbnail(images.get(record.owner, record.image_id))


def _delete_quietly(images: Images, record: _Record) -> None:
    with contextlib.suppress(NotFound):  # deleted by its owner meanwhile
        images.delete(record.owner, record.image_id)
