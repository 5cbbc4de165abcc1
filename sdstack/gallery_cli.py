"""`sdstack gallery …`: import A1111 output folders and repair the gallery, over gRPC.

sdstack gallery import FOLDER    PNGs with A1111 `parameters` become gallery records
sdstack gallery reconcile        repair what a crash left between objects and records
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from google.protobuf import timestamp_pb2

from services.common.clients import GalleryClient
from services.common.config import Settings
from services.common.errors import ConfigError
from services.common.proto.sdstack.v1 import gallery_pb2

LOCAL_OWNER = "local"
MAX_IMPORT_BYTES = 64 * 1024 * 1024


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def _pngs(folder: Path, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() == ".png")


def _messages(folder: Path, files: list[Path]) -> Iterator[gallery_pb2.ImportImagesRequest]:
    """One message per file, its modification time kept as the image's date."""
    for path in files:
        modified = timestamp_pb2.Timestamp()
        modified.FromDatetime(datetime.fromtimestamp(path.stat().st_mtime, UTC))
        name = str(path.relative_to(folder))
        yield gallery_pb2.ImportImagesRequest(
            filename=name, png=path.read_bytes(), modified_at=modified
        )


def cmd_gallery_import(settings: Settings, args: argparse.Namespace) -> int:
    folder: Path = args.folder
    if not folder.is_dir():
        raise ConfigError("FOLDER", f"{folder} is not a folder")
    found = _pngs(folder, args.recursive)
    files = [path for path in found if path.stat().st_size <= MAX_IMPORT_BYTES]
    for path in sorted(set(found) - set(files)):
        _out(f"skipped {path.relative_to(folder)}: must be at most {MAX_IMPORT_BYTES} bytes")
    with GalleryClient(settings.target("gallery")) as client:
        reply = client.import_images(args.owner, _messages(folder, files))
    for skipped in reply.skipped:
        _out(f"skipped {skipped.field}: {skipped.rule}")
    _out(f"imported {len(reply.imported)} of {len(found)} PNG files for {args.owner}")
    return 0


def cmd_gallery_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    with GalleryClient(settings.target("gallery")) as client:
        report = client.reconcile(
            dry_run=args.dry_run,
            remove_orphan_records=args.remove_orphan_records,
            min_age=timedelta(seconds=args.min_age),
        )
    verb = "would be " if args.dry_run else ""
    sections = (
        ("restored", f"{verb}restored from their PNG", report.restored),
        ("orphan object", f"{verb}removed (no record)", report.orphan_objects),
        ("thumbnail", f"{verb}made again", report.thumbnails_rebuilt),
        (
            "orphan record",
            "PNG missing" + ("" if args.remove_orphan_records else ", kept"),
            report.orphan_records,
        ),
        ("unrecognised", "left alone", report.unrecognised_objects),
    )
    for label, meaning, items in sections:
        for item in items:
            _out(f"{label}: {item} ({meaning})")
    if not any(items for _, _, items in sections):
        _out("nothing to repair")
    if report.orphan_records and not args.remove_orphan_records:
        _out("records whose PNG is missing are kept; --remove-orphan-records removes them")
    return 0


def add_gallery_commands(commands: argparse._SubParsersAction) -> None:
    """Adds `gallery import` and `gallery reconcile` to the `sdstack` parser."""
    gallery = commands.add_parser("gallery", help="the image gallery").add_subparsers(
        dest="gallery_command", required=True
    )
    importing = gallery.add_parser("import", help="import an A1111 output folder")
    importing.add_argument("folder", type=Path)
    importing.add_argument("--owner", default=LOCAL_OWNER, help="whose gallery (default: local)")
    importing.add_argument("--recursive", action="store_true", help="include sub-folders")
    importing.set_defaults(run=cmd_gallery_import)
    repair = gallery.add_parser("reconcile", help="repair objects and records after a crash")
    repair.add_argument("--dry-run", action="store_true", help="report only, change nothing")
    repair.add_argument(
        "--remove-orphan-records",
        action="store_true",
        help="also remove records whose PNG is gone (default: report them)",
    )
    repair.add_argument(
        "--min-age",
        type=float,
        default=60.0,
        help="seconds; younger objects may belong to a write in flight (default 60)",
    )
    repair.set_defaults(run=cmd_gallery_reconcile)
