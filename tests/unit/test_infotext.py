"""A1111 infotext: format, parse, round trip, and the PNG `parameters` chunk."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from services.common.errors import InvalidArgument
from services.common.infotext import (
    Infotext,
    format_infotext,
    format_lora_hashes,
    format_value,
    parse_infotext,
    parse_lora_hashes,
    png_with_infotext,
    read_png_infotext,
)

A1111_SAMPLE = (
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, "
    "Model hash: 45dee52b, Model: v1-5-pruned-emaonly, Version: v1.6.0"
)

# As A1111 1.6+ writes it with a LoRA, a schedule type and hires fix (line wrapped here only).
A1111_LORA_SAMPLE = (
    "photo of a modern villa, <lora:archi:0.8>, glass facade\n"
    "Negative prompt: (worst quality:1.4), text\n"
    "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, "
    "Size: 768x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
    "Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2, Hires steps: 10, "
    'Hires upscaler: Latent, Lora hashes: "archi: 0123456789", Version: v1.9.4'
)


def test_parses_real_a1111_sample() -> None:
    parsed = parse_infotext(A1111_SAMPLE)

    assert parsed.prompt == "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."
    assert parsed.negative_prompt == "blurry, lowres"
    assert parsed.params == {
        "Steps": "20",
        "Sampler": "Euler a",
        "CFG scale": "7",
        "Seed": "965400086",
        "Size": "512x512",
        "Model hash": "45dee52b",
        "Model": "v1-5-pruned-emaonly",
        "Version": "v1.6.0",
    }
    assert list(parsed.params)[:3] == ["Steps", "Sampler", "CFG scale"]


def test_parses_sample_with_lora_and_hires() -> None:
    parsed = parse_infotext(A1111_LORA_SAMPLE)

    assert parsed.prompt == "photo of a modern villa, <lora:archi:0.8>, glass facade"
    assert parsed.negative_prompt == "(worst quality:1.4), text"
    assert parsed.params["Schedule type"] == "Karras"
    assert parsed.params["Clip skip"] == "2"
    assert parsed.params["Lora hashes"] == "archi: 0123456789"
    assert parse_lora_hashes(parsed.params["Lora hashes"]) == {"archi": "0123456789"}
    assert format_infotext(parsed.prompt, parsed.negative_prompt, parsed.params) == (
        A1111_LORA_SAMPLE
    )


def test_formats_like_a1111() -> None:
    text = format_infotext(
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        "blurry, lowres",
        {
            "Version": "v1.6.0",
            "Seed": 965400086,
            "Steps": 20,
            "Model": "v1-5-pruned-emaonly",
            "Size": "512x512",
            "CFG scale": 7.0,
            "Sampler": "Euler a",
            "Model hash": "45dee52b",
            "VAE": None,
            "Clip skip": 1,
        },
    )

    assert text == A1111_SAMPLE


def test_format_orders_known_keys_then_unknown_in_insertion_order() -> None:
    text = format_infotext(
        "p",
        "",
        {"Zeta": "z", "Version": "v1", "Alpha": "a", "Lora hashes": "x: 1", "Steps": 5},
    )

    assert text == 'p\nSteps: 5, Lora hashes: "x: 1", Version: v1, Zeta: z, Alpha: a'


def test_empty_negative_prompt_line_is_omitted() -> None:
    text = format_infotext("cat", "", {"Steps": 20, "Sampler": "Euler", "Seed": 1})

    assert text == "cat\nSteps: 20, Sampler: Euler, Seed: 1"
    assert "Negative prompt" not in text


@pytest.mark.parametrize(
    ("value", "expected"),
    [(7.0, "7"), (0.75, "0.75"), (7.5, "7.5"), (2, "2"), (0.1, "0.1"), ("Euler a", "Euler a")],
)
def test_formats_values_as_a1111(value: object, expected: str) -> None:
    assert format_value(value) == expected


@pytest.mark.parametrize(
    ("clip_skip", "written"), [(1, False), (2, True), ("1", False), ("3", True)]
)
def test_clip_skip_written_only_above_one(clip_skip: object, written: bool) -> None:
    text = format_infotext("p", "", {"Steps": 20, "Seed": 1, "Size": "8x8", "Clip skip": clip_skip})

    assert ("Clip skip" in text) is written


def test_values_with_separators_are_json_quoted() -> None:
    text = format_infotext("p", "", {"Steps": 1, "Seed": 2, "Model": 'a, b: c\n"d"'})

    assert text.endswith('Model: "a, b: c\\n\\"d\\""')
    assert parse_infotext(text).params["Model"] == 'a, b: c\n"d"'


ROUND_TRIP_CASES = [
    Infotext("a cat", "", {"Steps": "20", "Sampler": "Euler a", "Seed": "1"}),
    Infotext(
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        "blurry, lowres, (bad hands:1.2)",
        {
            "Steps": "20",
            "Sampler": "DPM++ 2M Karras",
            "CFG scale": "7.5",
            "Seed": "4294967294",
            "Size": "512x768",
            "Model hash": "6ce0161689",
            "Model": "v1-5-pruned-emaonly",
            "Lora hashes": "a: 0123456789, b: abcdef0123",
            "Version": "sdstack 0.1.0",
        },
    ),
    Infotext(
        "line one, with: colon\nline two (word:1.2)\n\\(escaped\\) BREAK third",
        "neg one\nneg two: still neg",
        {"Steps": "5", "Seed": "7", "Size": "64x64", "Custom thing": "x, y"},
    ),
    Infotext(
        'château au bord de l\'eau, 桜, ☀️ «quotes» "double"',
        "ひどい, плохо",
        {"Steps": "30", "Seed": "42", "Model": "モデル", "Denoising strength": "0.75"},
    ),
    Infotext("", "only negative", {"Steps": "1", "Seed": "0", "Size": "8x8"}),
    Infotext(
        "<lora:archi:0.8> house",
        "",
        {"Steps": "20", "Seed": "3", "Hires upscaler": "R-ESRGAN 4x+", "Hires upscale": "1.5"},
    ),
]


@pytest.mark.parametrize("infotext", ROUND_TRIP_CASES, ids=range(len(ROUND_TRIP_CASES)))
def test_round_trip(infotext: Infotext) -> None:
    text = format_infotext(infotext.prompt, infotext.negative_prompt, infotext.params)

    assert parse_infotext(text) == infotext
    assert infotext.format() == text


def test_round_trip_keeps_a1111_key_order() -> None:
    params = {"Steps": "20", "Sampler": "Euler", "CFG scale": "7", "Seed": "1", "Version": "v"}
    text = format_infotext("p", "n", params)

    assert list(parse_infotext(text).params) == list(params)


def test_text_without_parameters_line_is_all_prompt() -> None:
    parsed = parse_infotext("just a prompt, with: one colon\nand a second line")

    assert parsed.prompt == "just a prompt, with: one colon\nand a second line"
    assert parsed.negative_prompt == ""
    assert parsed.params == {}


def test_parser_accepts_windows_newlines_and_surrounding_space() -> None:
    parsed = parse_infotext("  cat \r\nNegative prompt: dog\r\nSteps: 1, Seed: 2, Size: 8x8\r\n")

    assert parsed == Infotext("cat", "dog", {"Steps": "1", "Seed": "2", "Size": "8x8"})


def test_lora_hashes_helpers() -> None:
    value = format_lora_hashes({"a": "0123456789", "b": "abcdef0123"})

    assert value == "a: 0123456789, b: abcdef0123"
    assert parse_lora_hashes(value) == {"a": "0123456789", "b": "abcdef0123"}


def test_bad_key_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        format_infotext("p", "", {"Bad: key": "v"})

    assert caught.value.violations[0].field == "params.Bad: key"


# --------------------------------------------------------------------------- PNG


def _image(mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (16, 8), "red" if mode == "RGB" else 128)


def test_png_round_trip_latin1_uses_text_chunk() -> None:
    data = png_with_infotext(_image(), A1111_SAMPLE)

    assert data.startswith(b"\x89PNG")
    assert b"tEXtparameters\x00" in data
    assert read_png_infotext(data) == A1111_SAMPLE
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.size == (16, 8)
        assert reopened.info["parameters"] == A1111_SAMPLE


def test_png_round_trip_unicode_uses_itxt_chunk() -> None:
    text = format_infotext("桜の木, château", "ひどい", {"Steps": 20, "Seed": 1, "Size": "16x8"})
    data = png_with_infotext(_image(), text)

    assert b"iTXtparameters\x00" in data
    assert read_png_infotext(data) == text


def test_png_converts_modes_png_cannot_hold() -> None:
    data = png_with_infotext(Image.new("CMYK", (4, 4)), "p\nSteps: 1, Seed: 2, Size: 4x4")

    assert read_png_infotext(data) == "p\nSteps: 1, Seed: 2, Size: 4x4"


def test_png_without_parameters_gives_none() -> None:
    buffer = io.BytesIO()
    _image().save(buffer, format="PNG")

    assert read_png_infotext(buffer.getvalue()) is None


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n", b"GIF89a" + b"\x00" * 20],
    ids=["empty", "text", "signature-only", "gif"],
)
def test_non_png_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidArgument) as caught:
        read_png_infotext(data)

    assert caught.value.violations[0].field == "image"
    assert caught.value.violations[0].rule == "not a PNG image"


def test_jpeg_is_refused() -> None:
    buffer = io.BytesIO()
    _image().save(buffer, format="JPEG")

    with pytest.raises(InvalidArgument, match="not a PNG image"):
        read_png_infotext(buffer.getvalue())


def test_truncated_png_is_refused() -> None:
    data = png_with_infotext(Image.effect_noise((64, 64), 50).convert("RGB"), A1111_SAMPLE)

    with pytest.raises(InvalidArgument, match="not a PNG image"):
        read_png_infotext(data[: len(data) // 2])


def test_corrupt_chunk_is_refused() -> None:
    data = bytearray(png_with_infotext(_image(), A1111_SAMPLE))
    position = data.index(b"IDAT") + 6
    data[position] ^= 0xFF

    with pytest.raises(InvalidArgument, match="not a PNG image"):
        read_png_infotext(bytes(data))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header claims `width`×`height` pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"tEXt", b"parameters\x00boom")
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + _chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidArgument) as caught:
        read_png_infotext(_bomb(100_000, 100_000))

    assert caught.value.violations[0].field == "image"
    assert "pixels" in caught.value.violations[0].rule


def test_pixel_limit_can_be_lowered() -> None:
    data = png_with_infotext(_image(), "p\nSteps: 1, Seed: 2, Size: 16x8")

    assert read_png_infotext(data, max_pixels=128) is not None
    with pytest.raises(InvalidArgument, match="at most 127 pixels"):
        read_png_infotext(data, max_pixels=127)
