"""Decoding images that arrive from clients, safely.

Every decode checks the size from the header before any pixel is decoded (decompression
bombs), refuses formats other than PNG, JPEG and WebP, and reports a corrupt or truncated
file as `InvalidArgument` naming the request field.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from services.common.errors import InvalidArgument

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
MAX_IMAGE_BYTES = 32 * 1024 * 1024


def decode_image(data: bytes, field: str, *, max_pixels: int, mode: str = "RGB") -> Image.Image:
    """The image in `data`, fully decoded and converted to `mode`."""
    if not data:
        raise InvalidArgument(field, "is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidArgument(field, f"must be at most {MAX_IMAGE_BYTES} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidArgument(
                    field, f"{width}x{height} is over the limit of {max_pixels} pixels"
                )
            image.load()
    except InvalidArgument:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidArgument(field, f"is over the limit of {max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise InvalidArgument(field, "is not a PNG, JPEG or WebP image") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise InvalidArgument(field, f"is corrupt or truncated ({error})") from None
    return image.convert(mode)
