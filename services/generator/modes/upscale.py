"""SD upscale (Fooocus/A1111): a pixel upscaler, then an img2img pass over overlapping tiles,
stitched without seams."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from diffusers import StableDiffusionPipeline
from PIL import Image

from services.common.errors import InvalidArgument
from services.generator.modes.checks import check_range, check_unit
from services.generator.modes.images import pad_to_multiple, to_rgb
from services.generator.modes.img2img import img2img
from services.generator.modes.sampling import Sampling
from services.generator.modes.vae import LATENT_FACTOR

MIN_TILE = 64


def tiled_refine(
    pipe: StableDiffusionPipeline,
    s: Sampling,
    image: Image.Image,
    *,
    tile: int = 512,
    overlap: int = 64,
    strength: float = 0.382,
) -> Image.Image:
    """img2img over overlapping tiles of an (already upscaled) image, stitched without seams.

    Tiles are spread evenly so neighbours overlap by at least `overlap` pixels and cross-fade
    linearly there. Tile i (row-major) uses seed `s.seeds[0] + i`; `s.on_step` sees the steps
    of all tiles as one run. The output has the input's size.
    """
    # 1. Check the arguments; strength 0 changes nothing.
    _check_tiles(tile, overlap)
    check_unit("upscale.denoising_strength", strength)
    source = to_rgb(image)
    if strength == 0:
        return source.copy()
    # 2. Pad onto the latent grid and lay the tiles out.
    canvas = pad_to_multiple(source, LATENT_FACTOR)
    xs, ys = _tile_starts(canvas.width, tile, overlap), _tile_starts(canvas.height, tile, overlap)
    # 3. img2img of each tile, summed with its cross-fade weights.
    total, weights = _refined_tiles(pipe, s, canvas, (xs, ys), tile, strength)
    # 4. Stitch: the weighted mean, cropped back to the input's size.
    stitched = np.clip(np.rint(total / weights), 0, 255).astype(np.uint8)
    return Image.fromarray(stitched, "RGB").crop((0, 0, source.width, source.height))


def _refined_tiles(
    pipe: StableDiffusionPipeline,
    s: Sampling,
    canvas: Image.Image,
    starts: tuple[list[int], list[int]],
    tile: int,
    strength: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(Σ weight × refined tile, Σ weight) over the canvas, tiles at `starts` (x, y)."""
    xs, ys = starts
    tile_w, tile_h = min(tile, canvas.width), min(tile, canvas.height)
    total = np.zeros((canvas.height, canvas.width, 3), np.float32)
    weights = np.zeros((canvas.height, canvas.width, 1), np.float32)
    for index, (row, col) in enumerate((r, c) for r in range(len(ys)) for c in range(len(xs))):
        x, y = xs[col], ys[row]
        crop = canvas.crop((x, y, x + tile_w, y + tile_h))
        sampling = _tile_sampling(s, index, len(xs) * len(ys))
        out = img2img(pipe, sampling, crop, strength=strength, width=tile_w, height=tile_h)[0]
        weight = np.outer(_ramp(ys, row, tile_h), _ramp(xs, col, tile_w))[..., None]
        total[y : y + tile_h, x : x + tile_w] += np.asarray(out, dtype=np.float32) * weight
        weights[y : y + tile_h, x : x + tile_w] += weight
    return total, weights


def upscale_then_refine(
    pipe: StableDiffusionPipeline,
    s: Sampling,
    image: Image.Image,
    *,
    scale: float,
    upscaler: Callable[[Image.Image, float], Image.Image],
    tile: int = 512,
    overlap: int = 64,
    strength: float = 0.382,
) -> Image.Image:
    """Fooocus/A1111 SD upscale: `upscaler(image, scale)`, then `tiled_refine` of the result."""
    # 1. Check the arguments.
    check_range("upscale.scale", scale, 1.0, 8.0)
    _check_tiles(tile, overlap)
    check_unit("upscale.denoising_strength", strength)
    # 2. Upscale the pixels.
    upscaled = upscaler(to_rgb(image), scale)
    # 3. Refine the upscaled picture tile by tile.
    return tiled_refine(pipe, s, upscaled, tile=tile, overlap=overlap, strength=strength)


def _check_tiles(tile: int, overlap: int) -> None:
    if tile < MIN_TILE or tile % LATENT_FACTOR:
        raise InvalidArgument("upscale.tile_size", f"must be a multiple of 8, at least {MIN_TILE}")
    if not 0 <= overlap <= tile // 2:
        raise InvalidArgument("upscale.tile_overlap", "must be between 0 and half the tile size")


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles along one side begin: spread evenly, the last one ending at `length`."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    span = length - tile
    return [round(i * span / (count - 1)) for i in range(count)]


def _ramp(starts: list[int], index: int, size: int) -> np.ndarray:
    """1-D tile weight: rising across the overlap with the previous tile, falling into the next.

    A neighbour's ramp over the same overlap is the mirror image, so the two sum to 1.
    """
    weight = np.ones(size, np.float32)
    if index > 0:
        shared = starts[index - 1] + size - starts[index]
        if shared > 0:
            rising = (np.arange(shared) + 0.5) / shared
            weight[:shared] = np.minimum(weight[:shared], rising)
    if index + 1 < len(starts):
        shared = starts[index] + size - starts[index + 1]
        if shared > 0:
            falling = (np.arange(shared)[::-1] + 0.5) / shared
            weight[size - shared :] = np.minimum(weight[size - shared :], falling)
    return weight


def _tile_sampling(s: Sampling, index: int, count: int) -> Sampling:
    def on_step(step: int, total: int) -> None:
        s.on_step(index * total + step, count * total)

    subseeds = [s.subseeds[0] + index] if s.subseeds else ()
    return replace(s, seeds=[s.seeds[0] + index], subseeds=subseeds, on_step=on_step)
