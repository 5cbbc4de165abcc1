"""Unpacking uploaded zip archives without trusting them.

A hostile archive can name files outside the destination (`../x`, `/etc/x`), hide links,
claim small sizes and expand to gigabytes, or hold millions of entries. `extract_zip`
refuses each of these with an `InvalidArgument` naming the entry, counts the bytes it really
writes (the sizes in the headers may lie), and leaves nothing behind when it refuses.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from services.common.errors import InvalidArgument

COPY_CHUNK_BYTES = 1 << 20


def extract_zip(
    archive: Path,
    dest: Path,
    *,
    field_name: str,
    max_bytes: int,
    max_files: int,
    allowed_suffixes: frozenset[str] | None = None,
) -> list[PurePosixPath]:
    """Extracts the regular files of `archive` into the empty or new folder `dest`.

    Returns their paths relative to `dest`. `allowed_suffixes` (lower case, with the dot)
    limits which files may appear; folders are made as needed.
    """
    try:
        with zipfile.ZipFile(archive) as bundle:
            entries = [info for info in bundle.infolist() if not info.is_dir()]
            _check_entries(entries, field_name, max_files, allowed_suffixes)
            if sum(info.file_size for info in entries) > max_bytes:  # a bomb, refused unread
                raise InvalidArgument(field_name, f"expands to more than {max_bytes >> 20} MiB")
            dest.mkdir(parents=True, exist_ok=True)
            try:
                _copy_out(bundle, entries, dest, field_name, max_bytes)
            except BaseException:
                shutil.rmtree(dest, ignore_errors=True)
                raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise InvalidArgument(field_name, f"must be a readable zip archive ({exc})") from exc
    return [PurePosixPath(info.filename) for info in entries]


def safe_member_path(name: str, field_name: str) -> PurePosixPath:
    """A relative path that stays inside its folder, or InvalidArgument."""
    parts = name.split("/")
    if (
        "\\" in name
        or "\x00" in name
        or ":" in parts[0]
        or any(part in ("..", ".", "") for part in parts)
    ):
        raise InvalidArgument(field_name, f"entry {name!r} must be a plain relative path")
    return PurePosixPath(name)


def _check_entries(
    entries: list[zipfile.ZipInfo],
    field_name: str,
    max_files: int,
    allowed_suffixes: frozenset[str] | None,
) -> None:
    if not entries:
        raise InvalidArgument(field_name, "the archive holds no files")
    if len(entries) > max_files:
        raise InvalidArgument(field_name, f"at most {max_files} files per archive")
    seen: set[str] = set()
    for info in entries:
        path = safe_member_path(info.filename, field_name)
        if str(path).lower() in seen:
            raise InvalidArgument(field_name, f"entry {info.filename!r} appears twice")
        seen.add(str(path).lower())
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidArgument(field_name, f"entry {info.filename!r} is a link")
        if allowed_suffixes is not None and path.suffix.lower() not in allowed_suffixes:
            allowed = ", ".join(sorted(allowed_suffixes))
            raise InvalidArgument(
                field_name, f"entry {info.filename!r} has a type not allowed here ({allowed})"
            )


def _copy_out(
    bundle: zipfile.ZipFile,
    entries: list[zipfile.ZipInfo],
    dest: Path,
    field_name: str,
    max_bytes: int,
) -> None:
    written = 0
    for info in entries:
        target = dest / info.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        with bundle.open(info) as source, target.open("wb") as out:
            while chunk := source.read(COPY_CHUNK_BYTES):
                written += len(chunk)
                if written > max_bytes:
                    raise InvalidArgument(field_name, f"expands to more than {max_bytes >> 20} MiB")
                out.write(chunk)


def zip_folder(folder: Path, archive: Path) -> Path:
    """Packs the regular files under `folder` into `archive`, uncompressed (model weights do
    not compress; storing keeps packing as fast as copying)."""
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as bundle:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
            bundle.write(path, path.relative_to(folder).as_posix())
    return archive
