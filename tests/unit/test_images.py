"""Client images are decoded safely: bombs, corrupt files and other formats are refused."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from services.common.errors import InvalidArgument
from services.common.images import decode_image


def _encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "RGBA"), ("JPEG", "RGB"), ("WEBP", "RGB")])
def test_common_formats_decode_to_rgb(fmt: str, mode: str) -> None:
    data = _encoded(Image.new(mode, (24, 16), "red"), fmt)
    image = decode_image(data, "img2img.init_image", max_pixels=10_000)
    assert (image.mode, image.size) == ("RGB", (24, 16))


def test_truncated_file_names_the_field() -> None:
    data = _encoded(Image.new("RGB", (64, 64), "blue"), "PNG")
    with pytest.raises(InvalidArgument) as raised:
        decode_image(data[: len(data) // 2], "inpaint.mask", max_pixels=10_000)
    assert raised.value.violations[0].field == "inpaint.mask"
    assert "corrupt or truncated" in raised.value.violations[0].rule


def test_too_many_pixels_is_refused_before_decoding() -> None:
    data = _encoded(Image.new("L", (4000, 4000)), "PNG")
    with pytest.raises(InvalidArgument, match="over the limit"):
        decode_image(data, "img2img.init_image", max_pixels=1_000_000)


@pytest.mark.parametrize("data", [b"GIF89a" + b"\0" * 40, b"not an image", b"%PDF-1.4"])
def test_other_content_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidArgument, match="not a PNG, JPEG or WebP image"):
        decode_image(data, "upscale.image", max_pixels=10_000)


def test_empty_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="is empty"):
        decode_image(b"", "upscale.image", max_pixels=10_000)
