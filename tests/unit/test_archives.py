"""Unpacking untrusted zips: each hostile trick is refused by name and leaves nothing."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from services.common.archives import extract_zip, zip_folder
from services.common.errors import InvalidArgument

LIMITS = {"field_name": "file", "max_bytes": 1 << 20, "max_files": 8}


def _zip(path: Path, entries: dict[str, bytes], *, deflate: bool = False) -> Path:
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as bundle:
        for name, data in entries.items():
            bundle.writestr(name, data)
    return path


def test_a_folder_round_trips(tmp_path: Path) -> None:
    source = tmp_path / "model"
    (source / "unet").mkdir(parents=True)
    (source / "model_index.json").write_text("{}")
    (source / "unet" / "config.json").write_text('{"a": 1}')
    archive = zip_folder(source, tmp_path / "model.zip")
    files = extract_zip(archive, tmp_path / "out", **LIMITS)
    assert sorted(map(str, files)) == ["model_index.json", "unet/config.json"]
    assert (tmp_path / "out" / "unet" / "config.json").read_text() == '{"a": 1}'


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("../escape.txt", "must be a plain relative path"),
        ("/abs.txt", "must be a plain relative path"),
        ("a/./b.txt", "must be a plain relative path"),
        ("C:/win.txt", "must be a plain relative path"),
        ("back\\slash.txt", "must be a plain relative path"),
    ],
)
def test_paths_leaving_the_folder_are_refused(tmp_path: Path, name: str, says: str) -> None:
    archive = _zip(tmp_path / "bad.zip", {"ok.txt": b"x", name: b"y"})
    with pytest.raises(InvalidArgument, match=says):
        extract_zip(archive, tmp_path / "out", **LIMITS)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_a_bomb_stops_at_the_byte_limit_and_leaves_nothing(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "bomb.zip", {"zeros.txt": bytes(4 << 20)}, deflate=True)
    assert archive.stat().st_size < 64 << 10
    with pytest.raises(InvalidArgument, match="expands to more than 1 MiB"):
        extract_zip(archive, tmp_path / "out", **LIMITS)
    assert not (tmp_path / "out").exists()


def test_links_duplicates_counts_and_types_are_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("link.txt")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as bundle:
        bundle.writestr(link, "/etc/passwd")
    with pytest.raises(InvalidArgument, match=r"'link\.txt' is a link"):
        extract_zip(tmp_path / "link.zip", tmp_path / "a", **LIMITS)

    many = _zip(tmp_path / "many.zip", {f"{i}.txt": b"" for i in range(9)})
    with pytest.raises(InvalidArgument, match="at most 8 files"):
        extract_zip(many, tmp_path / "b", **LIMITS)

    typed = _zip(tmp_path / "typed.zip", {"weights.bin": b"pickle"})
    with pytest.raises(InvalidArgument, match=r"'weights\.bin' has a type not allowed"):
        extract_zip(typed, tmp_path / "c", **LIMITS, allowed_suffixes=frozenset({".json"}))

    with zipfile.ZipFile(tmp_path / "twice.zip", "w") as bundle:
        bundle.writestr("a.txt", "1")
        bundle.writestr("A.txt", "2")
    with pytest.raises(InvalidArgument, match="appears twice"):
        extract_zip(tmp_path / "twice.zip", tmp_path / "d", **LIMITS)


def test_not_a_zip_names_the_field(tmp_path: Path) -> None:
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(InvalidArgument, match="must be a readable zip archive") as raised:
        extract_zip(fake, tmp_path / "out", **LIMITS)
    assert str(raised.value).startswith("file: ")
