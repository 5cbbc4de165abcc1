"""Builders the trainer tests share: a synthetic dataset and a small WD14-shaped ONNX tagger."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

TAGGER_SIDE = 448
# Rows of a WD14 `selected_tags.csv`: ratings (9), general tags (0), a character tag (4).
TAGGER_TAGS = [
    ("general", 9),
    ("sensitive", 9),
    ("red_theme", 0),
    ("green_theme", 0),
    ("blue_theme", 0),
    ("^_^", 0),
    ("sks_character", 4),
]


def striped_picture(index: int, side: int = 64) -> Image.Image:
    """A red picture with blue vertical stripes, shifted a little per index: a style small
    enough for a tiny model to learn quickly."""
    pixels = np.zeros((side, side, 3), np.uint8)
    pixels[..., 0] = 210 - 4 * index
    pixels[..., 1] = 30
    pixels[:, (index % 4) :: 8, 2] = 255
    pixels[:, (index % 4) :: 8, 0] = 20
    return Image.fromarray(pixels)


def png_bytes(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def dataset_zip(
    count: int = 6, folder: str = "2_stripes", caption: str = "sks stripes, red"
) -> bytes:
    """A kohya-style zip: `<folder>/img<i>.png` with a `.txt` caption beside each."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as bundle:
        for i in range(count):
            bundle.writestr(f"{folder}/img{i}.png", png_bytes(striped_picture(i)))
            bundle.writestr(f"{folder}/img{i}.txt", caption)
    return out.getvalue()


def tags_csv() -> str:
    lines = ["tag_id,name,category,count"]
    lines += [f"{i},{name},{category},100" for i, (name, category) in enumerate(TAGGER_TAGS)]
    return "\n".join(lines) + "\n"


def build_tagger(path: Path, *, embed_tags: bool = False) -> Path:
    """An ONNX model with a WD14 tagger's interface: input NHWC float32 [1, 448, 448, 3] in
    BGR 0-255, output sigmoid scores [1, tags]. Each colour tag scores the mean of its
    channel (so feeding RGB instead of BGR would swap red and blue); `^_^` and the
    character tag score low everywhere, ratings high."""
    import onnx
    from onnx import TensorProto, helper

    n = len(TAGGER_TAGS)
    weights = np.zeros((3, n), np.float32)
    bias = np.full((n,), -6.0, np.float32)
    bias[0] = bias[1] = 4.0
    for column, channel in ((2, 2), (3, 1), (4, 0)):  # BGR: red is channel 2, blue 0
        weights[channel, column] = 12.0 / 255.0
    bias[2:5] = -6.0
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input_1", "axes"], ["means"], keepdims=0),
            helper.make_node("MatMul", ["means", "weights"], ["logits"]),
            helper.make_node("Add", ["logits", "bias"], ["shifted"]),
            helper.make_node("Sigmoid", ["shifted"], ["predictions_sigmoid"]),
        ],
        "wd14-shaped-tagger",
        [
            helper.make_tensor_value_info(
                "input_1", TensorProto.FLOAT, [1, TAGGER_SIDE, TAGGER_SIDE, 3]
            )
        ],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, [1, n])],
        initializer=[
            helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2]),
            helper.make_tensor("weights", TensorProto.FLOAT, [3, n], weights.flatten().tolist()),
            helper.make_tensor("bias", TensorProto.FLOAT, [n], bias.tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    if embed_tags:
        helper.set_model_props(model, {"selected_tags": tags_csv()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
