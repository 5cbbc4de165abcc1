"""A1111's `parameters` text ("infotext"): write it, read it back, carry it in PNGs.

The layout follows AUTOMATIC1111's `modules/processing.py` (`create_infotext`) and the parser
rules of `modules/infotext_utils.py` (`parse_generation_parameters`), so that images made here
replay in A1111, ComfyUI readers, civitai and the like, and theirs replay here:

    <prompt, possibly several lines>
    Negative prompt: <negative, possibly several lines>
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, ...
"""

from __future__ import annotations

import io
import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from PIL import Image, PngImagePlugin

from services.common.errors import InvalidArgument

PARAMETERS_KEY = "parameters"
NEGATIVE_PREFIX = "Negative prompt:"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# A1111 writes its known keys in this order; anything else follows in insertion order.
KEY_ORDER: tuple[str, ...] = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Seed",
    "Size",
    "Model hash",
    "Model",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Denoising strength",
    "Clip skip",
    "RNG",
    "Hires upscale",
    "Hires steps",
    "Hires upscaler",
    "Lora hashes",
    "Version",
)
_KEY_RANK = {key: rank for rank, key in enumerate(KEY_ORDER)}

# A1111's own pattern (infotext_utils.re_param_code): a key, then a JSON string or up to a comma.
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_KEY_RE = re.compile(r"\w[\w \-/]+")
_MIN_PARAMS_ON_LAST_LINE = 3
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
_DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default, used when it has been switched off


@dataclass
class Infotext:
    """A parsed infotext. `params` keeps A1111's key order and raw string values."""

    prompt: str
    negative_prompt: str = ""
    params: dict[str, str] = field(default_factory=dict)

    def format(self) -> str:
        return format_infotext(self.prompt, self.negative_prompt, self.params)


def format_value(value: object) -> str:
    """A value as A1111 prints it: whole floats without `.0`, other floats in shortest form."""
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def quote(text: str) -> str:
    """JSON-quote a value the parameters line could not otherwise hold.

    A1111 quotes values with `,`, `:` or a newline; a value that starts with `"` is quoted too,
    since its parser would otherwise unquote it (A1111's parser reads either form the same).
    """
    if any(c in text for c in ",:\n\r") or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def _ordered_keys(keys: Iterable[str]) -> list[str]:
    """Known keys in A1111's order, unknown ones after them in the order given."""
    known = sorted((k for k in keys if k in _KEY_RANK), key=_KEY_RANK.__getitem__)
    return known + [k for k in keys if k not in _KEY_RANK]


def _keep(key: str, value: object) -> bool:
    if value is None:
        return False
    if key == "Clip skip":
        try:
            return int(str(value)) > 1
        except ValueError:
            return True
    return True


def format_params(params: Mapping[str, object]) -> str:
    """The `Key: value, Key: value` line, None values and `Clip skip` ≤ 1 left out."""
    parts = []
    for key in _ordered_keys(params):
        value = params[key]
        if not _keep(key, value):
            continue
        if not _KEY_RE.fullmatch(key):
            raise InvalidArgument(
                f"params.{key}", "key must be letters, digits, spaces, '-' or '/'"
            )
        parts.append(f"{key}: {quote(format_value(value))}")
    return ", ".join(parts)


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """Write the infotext exactly as A1111's `create_infotext` lays it out."""
    negative = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{format_params(params)}".strip()


def parse_params(line: str) -> dict[str, str]:
    return {key: unquote(value) for key, value in _PARAM_RE.findall(line)}


def parse_infotext(text: str) -> Infotext:
    """Read an infotext with A1111's rules.

    The last line is the parameters line only when it holds at least three `key: value`
    pairs; every line before it is prompt until one starts with `Negative prompt:`, and
    negative prompt after that. Lines are stripped, as A1111 does.
    """
    *lines, last = text.strip().split("\n")
    if len(_PARAM_RE.findall(last)) < _MIN_PARAMS_ON_LAST_LINE:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not negative and line.startswith(NEGATIVE_PREFIX):
            negative.append(line[len(NEGATIVE_PREFIX) :].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    return Infotext("\n".join(prompt), "\n".join(negative), parse_params(last))


def format_lora_hashes(hashes: Mapping[str, str]) -> str:
    """`Lora hashes` value: `name: hash, name: hash` (the caller's params quote it)."""
    return ", ".join(f"{name}: {short_hash}" for name, short_hash in hashes.items())


def parse_lora_hashes(value: str) -> dict[str, str]:
    result = {}
    for part in value.split(","):
        name, sep, short_hash = part.partition(":")
        if sep and name.strip():
            result[name.strip()] = short_hash.strip()
    return result


def png_with_infotext(image: Image.Image, infotext: str) -> bytes:
    """Encode `image` as PNG with the `parameters` chunk (iTXt when not latin-1)."""
    info = PngImagePlugin.PngInfo()
    try:
        infotext.encode("latin-1")
    except UnicodeEncodeError:
        info.add_itxt(PARAMETERS_KEY, infotext)
    else:
        info.add_text(PARAMETERS_KEY, infotext)
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png_infotext(data: bytes, *, max_pixels: int | None = None) -> str | None:
    """The `parameters` text of a PNG, or None when it has none.

    Refuses anything that is not a whole, valid PNG, and images over `max_pixels`
    (default: Pillow's `Image.MAX_IMAGE_PIXELS`) before any pixel is decompressed.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise InvalidArgument("image", "not a PNG image")
    limit = max_pixels or Image.MAX_IMAGE_PIXELS or _DEFAULT_MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _read_text(data, limit)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise _too_large(limit) from error
    except InvalidArgument:
        raise
    except Exception as error:  # Pillow raises assorted types (struct.error, SyntaxError, ...)
        raise InvalidArgument("image", "not a PNG image") from error


def _too_large(limit: int) -> InvalidArgument:
    return InvalidArgument("image", f"must have at most {limit} pixels")


def _read_text(data: bytes, limit: int) -> str | None:
    with Image.open(io.BytesIO(data), formats=["PNG"]) as probe:
        width, height = probe.size
        if width * height > limit:
            raise _too_large(limit)
        probe.verify()  # walks every chunk to IEND checking CRCs, without decoding pixels
    with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
        if not isinstance(image, PngImagePlugin.PngImageFile):
            raise InvalidArgument("image", "not a PNG image")
        text = image.text  # decodes the image, which also finds chunks after IDAT
    value = text.get(PARAMETERS_KEY)
    return str(value) if value is not None else None
