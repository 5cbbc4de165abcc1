"""Fitting pictures to the training resolution: centre crop, subject-aware crop, or
aspect-ratio buckets (kohya's scheme: many sizes of about the same area, no crop beyond
rounding to the bucket)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter

from services.trainer.plan import bucket_resolutions, nearest_bucket

Size = tuple[int, int]


def _cover(image: Image.Image, size: Size) -> Image.Image:
    """Resized (Lanczos) so it covers `size` with the least scaling, aspect kept."""
    scale = max(size[0] / image.width, size[1] / image.height)
    covered = (max(size[0], round(image.width * scale)), max(size[1], round(image.height * scale)))
    return image.resize(covered, Image.Resampling.LANCZOS)


def _crop_at(image: Image.Image, size: Size, centre: tuple[float, float]) -> Image.Image:
    """The `size` window of `image` centred as near `centre` as the borders allow."""
    left = min(max(round(centre[0] - size[0] / 2), 0), image.width - size[0])
    top = min(max(round(centre[1] - size[1] / 2), 0), image.height - size[1])
    return image.crop((left, top, left + size[0], top + size[1]))


def fit_center(image: Image.Image, size: Size) -> Image.Image:
    covered = _cover(image, size)
    return _crop_at(covered, size, (covered.width / 2, covered.height / 2))


def subject_centre(image: Image.Image) -> tuple[float, float]:
    """Where the subject probably is: the centroid of edge energy (detail draws the eye;
    flat backgrounds do not), pulled a little toward the middle so noise cannot win."""
    grey = np.asarray(image.convert("L").filter(ImageFilter.FIND_EDGES), dtype=np.float64)
    weights = grey**2
    weights[[0, -1], :] = 0  # PIL leaves the border pixels unfiltered: they are no edges
    weights[:, [0, -1]] = 0
    total = weights.sum()
    middle = (image.width / 2, image.height / 2)
    if total <= 0:
        return middle
    ys, xs = np.indices(weights.shape)
    x = float((xs * weights).sum() / total)
    y = float((ys * weights).sum() / total)
    return (0.8 * x + 0.2 * middle[0], 0.8 * y + 0.2 * middle[1])


def fit_subject(image: Image.Image, size: Size) -> Image.Image:
    covered = _cover(image, size)
    return _crop_at(covered, size, subject_centre(covered))


def fit_bucket(image: Image.Image, buckets: Sequence[Size]) -> Image.Image:
    return fit_center(image, nearest_bucket((image.width, image.height), buckets))


def buckets_for(
    resolution: int, minimum: int = 256, maximum: int = 1024, step: int = 64
) -> list[Size]:
    return bucket_resolutions(resolution, minimum, maximum, step)
