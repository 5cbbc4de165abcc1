"""Hostile and broken inputs, built in code: images, model files, archives."""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

import torch
from PIL import Image


def png(width: int = 64, height: int = 64, colour: str = "white") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_bomb(side: int = 100_000) -> bytes:
    """A well-formed PNG header declaring side×side pixels, with a few bytes of data:
    decoding it would need tens of gigabytes."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 4096, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", pixels)
        + _chunk(b"IEND", b"")
    )


def truncated_png() -> bytes:
    whole = png(64, 64, "red")
    return whole[: len(whole) // 2]


# A GIF that is also JavaScript: a classic polyglot to smuggle a script as a "picture".
GIF_JS_POLYGLOT = b"GIF89a/*\x01\x00\x01\x00\x00\x00\x00*/=alert(document.domain);//;"
HTML_AS_PNG = b"<html><body><script>alert(1)</script></body></html>"


class _Evil:
    """Unpickling this runs a shell command: what a malicious `.ckpt` does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


GARBLED_PICKLE = b"hs\xc2\x99\xc3\x8d"
"""Five bytes that send torch's weights-only unpickler to a memo index that does not exist
(a `KeyError`, not an `UnpicklingError`): found by schemathesis as an uploaded `.ckpt` VAE."""


def malicious_ckpt(marker: Path) -> bytes:
    """A torch checkpoint whose pickle runs `touch marker` when loaded unsafely."""
    out = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": _Evil(marker)}, out)
    return out.getvalue()


def safetensors_raw(header: dict[str, object], data: bytes) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def lying_header_length() -> bytes:
    """The 8-byte header length claims far more than the file holds."""
    return struct.pack("<Q", 10**12) + b'{"w": {}}'


def lying_offsets() -> bytes:
    """A tensor whose offsets point past the end of the file."""
    header = {"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}}
    return safetensors_raw(header, b"\x00" * 16)


def zip_of(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression) as bundle:
        for name, data in entries.items():
            bundle.writestr(name, data)
    return out.getvalue()


def zip_slip() -> bytes:
    return zip_of({"10_ok/a.png": png(), "../../../../tmp/sdstack-zip-slip.png": png()})


def zip_bomb_entries(count: int) -> bytes:
    """An archive of `count` empty entries: more files than a dataset may hold."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as bundle:
        for index in range(count):
            bundle.writestr(f"{index}.txt", b"")
    return out.getvalue()


def zip_bomb_bytes(expanded: int) -> bytes:
    """One entry of zeros that expands to `expanded` bytes (about 1000:1)."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(
            out, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True, compresslevel=1
        ) as bundle,
        bundle.open("10_bomb/zeros.txt", "w", force_zip64=True) as entry,
    ):
        block = bytes(16 * 1024 * 1024)
        for _ in range(expanded // len(block)):
            entry.write(block)
    return out.getvalue()
