"""Auto-tagging with a WD14-family ONNX tagger (SmilingWolf's wd-v1-4-* and later), run with
onnxruntime on the CPU.

The layout those taggers share: one input, NHWC float32 `[1, S, S, 3]` (S = 448), the picture
padded to a square with white, resized, in BGR order with values 0-255; one output of
sigmoid scores, one per row of `selected_tags.csv` (`tag_id,name,category,count`; category
9 = rating, 0 = general, 4 = character). In the store a tagger is `taggers/<name>.onnx` in the
`models` bucket with its tags beside it as `taggers/<name>.csv`, or inside the ONNX file's
metadata under `selected_tags` (so a single uploaded file is enough).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from services.common.errors import InvalidArgument, NotFound
from services.common.object_store import MODELS_BUCKET, ObjectStore

log = logging.getLogger(__name__)

PREFIX = "taggers/"
TAGS_METADATA_KEY = "selected_tags"
DEFAULT_SIZE = 448
GENERAL, CHARACTER, RATING = 0, 4, 9
DEFAULT_THRESHOLD = 0.35
DEFAULT_CHARACTER_THRESHOLD = 0.85
KAOMOJI = frozenset({"^_^", ">_<", "o_o", "0_0", "=_=", "u_u", "x_x", "@_@", "|_|", "._.", "-_-"})


@dataclass(frozen=True)
class Tag:
    name: str
    category: int


class Tagger:
    """One loaded tagger: an onnxruntime session and its tags."""

    def __init__(self, model_path: Path, tags: Sequence[Tag]) -> None:
        import onnxruntime

        try:
            self.session = onnxruntime.InferenceSession(
                str(model_path), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InvalidArgument("tagger", f"not a loadable ONNX model: {exc}") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[3] != 3:
            raise InvalidArgument("tagger", "a WD14 tagger has one NHWC input [1, S, S, 3]")
        self.input_name = inputs[0].name
        side = inputs[0].shape[1]
        self.size = side if isinstance(side, int) and side > 0 else DEFAULT_SIZE
        width = outputs[0].shape[-1]
        if isinstance(width, int) and width != len(tags):
            raise InvalidArgument(
                "tagger", f"the model scores {width} tags but its tag list has {len(tags)}"
            )
        self.tags = list(tags)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """White-padded square, resized to the input size, BGR float32 0-255, NHWC."""
        if image.mode in ("RGBA", "LA", "P"):
            rgba = image.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(canvas, rgba)
        image = image.convert("RGB")
        side = max(image.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        square = square.resize((self.size, self.size), Image.Resampling.BICUBIC)
        pixels = np.asarray(square, dtype=np.float32)[:, :, ::-1]
        return np.ascontiguousarray(pixels[None])

    def scores(self, image: Image.Image) -> np.ndarray:
        output = self.session.run(None, {self.input_name: self.preprocess(image)})[0]
        return np.asarray(output, dtype=np.float32).reshape(-1)

    def tag(
        self,
        image: Image.Image,
        threshold: float = DEFAULT_THRESHOLD,
        character_threshold: float = DEFAULT_CHARACTER_THRESHOLD,
    ) -> list[str]:
        """Character tags then general tags over their thresholds, best first; ratings are
        left out (they are not captions)."""
        scores = self.scores(image)
        found: list[tuple[int, float, str]] = []
        for tag, score in zip(self.tags, scores, strict=False):
            if tag.category == CHARACTER and score >= character_threshold:
                found.append((0, -float(score), tag.name))
            elif tag.category == GENERAL and score >= threshold:
                found.append((1, -float(score), tag.name))
        return [readable(name) for _, _, name in sorted(found)]


def readable(name: str) -> str:
    """WD14 tags use underscores (`long_hair`); captions use spaces, kaomoji kept."""
    return name if name in KAOMOJI or len(name) <= 3 else name.replace("_", " ")


def parse_tags_csv(text: str) -> list[Tag]:
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or "name" not in rows[0]:
        raise InvalidArgument("tagger", "the tag list must be a CSV with `name` and `category`")
    tags = []
    for row in rows:
        try:
            category = int(row.get("category") or GENERAL)
        except ValueError:
            raise InvalidArgument("tagger", f"bad category in tag row {row!r}") from None
        tags.append(Tag(row["name"], category))
    return tags


def tags_from_onnx(model_path: Path) -> list[Tag] | None:
    """The tag list stored in the ONNX file's metadata, when there is one."""
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise InvalidArgument("tagger", f"not a loadable ONNX model: {exc}") from exc
    text = session.get_modelmeta().custom_metadata_map.get(TAGS_METADATA_KEY)
    return parse_tags_csv(text) if text else None


class TaggerStore:
    """Finds taggers in the `models` bucket and keeps the loaded ones (by content hash)."""

    def __init__(self, store: ObjectStore, cache_dir: Path) -> None:
        self.store = store
        self.cache_dir = cache_dir
        self._loaded: dict[str, Tagger] = {}

    def names(self) -> list[str]:
        return sorted(
            entry.key.removeprefix(PREFIX).removesuffix(".onnx")
            for entry in self.store.list(MODELS_BUCKET, prefix=PREFIX)
            if entry.key.endswith(".onnx") and "/" not in entry.key.removeprefix(PREFIX)
        )

    def load(self, name: str) -> Tagger:
        """The tagger `name` (default: the first in the store)."""
        names = self.names()
        if not names:
            raise NotFound("tagger", name or "(none in the store: upload a WD14 .onnx tagger)")
        name = name or names[0]
        if name not in names:
            raise NotFound("tagger", name)
        info = self.store.stat(MODELS_BUCKET, f"{PREFIX}{name}.onnx")
        cache_key = info.sha256 or info.etag or name
        if cache_key not in self._loaded:
            self._loaded[cache_key] = self._fetch(name, cache_key)
        return self._loaded[cache_key]

    def _fetch(self, name: str, cache_key: str) -> Tagger:
        model_path = self.cache_dir / f"{cache_key}.onnx"
        if not model_path.is_file():
            self.store.download(MODELS_BUCKET, f"{PREFIX}{name}.onnx", model_path)
        try:
            text = self.store.get_bytes(MODELS_BUCKET, f"{PREFIX}{name}.csv").decode("utf-8")
            tags = parse_tags_csv(text)
        except NotFound:
            found = tags_from_onnx(model_path)
            if found is None:
                raise InvalidArgument(
                    "tagger",
                    f"{name}: no tag list (put selected_tags.csv as taggers/{name}.csv, or in the "
                    f"ONNX metadata as `{TAGS_METADATA_KEY}`)",
                ) from None
            tags = found
        log.info("loaded tagger %s (%d tags)", name, len(tags))
        return Tagger(model_path, tags)
