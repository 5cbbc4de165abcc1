"""ESRGAN-family loading (every key layout gives the same network), tiling, refusals, Lanczos."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from services.common.errors import InvalidArgument, NotFound
from services.generator import upscalers
from services.generator.upscalers import (
    RRDBNet,
    Upscaler,
    lanczos,
    load_upscaler,
    make_esrgan_file,
    read_native_scale,
    resize_to,
    to_layout,
)

LAYOUTS = ("old", "trunk", "new")


class _Evil:
    """Unpickling this runs a shell command: what a malicious `.pth` does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _pixels(height: int, width: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _run(upscaler: Upscaler, pixels: torch.Tensor) -> torch.Tensor:
    return upscaler.upscale_tensor(pixels, tile=0)


def _reference(scale: int, shuffle_factor: int | None = None) -> RRDBNet:
    """The network `make_esrgan_file` writes for seed 0, built directly."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return RRDBNet(3, 3, 8, 2, 32, scale, shuffle_factor).eval()


def _refused(path: Path) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        load_upscaler(path)
    assert caught.value.violations[0].field == "model"
    return caught.value


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_every_layout_loads_the_same_network(tmp_path: Path, scale: int) -> None:
    pixels = _pixels(12, 16)
    with torch.inference_mode():
        expected = _reference(scale)(pixels)
    for layout in LAYOUTS:
        upscaler = load_upscaler(
            make_esrgan_file(tmp_path / f"{layout}.pth", layout=layout, scale=scale)
        )
        assert upscaler.scale == scale
        assert (upscaler.model.nf, upscaler.model.nb, upscaler.model.gc) == (8, 2, 32)
        out = _run(upscaler, pixels)
        assert out.shape == (1, 3, 12 * scale, 16 * scale)
        assert torch.equal(out, expected), layout


def test_old_esrgan_2x_without_pixel_unshuffle(tmp_path: Path) -> None:
    """Community 2× ESRGAN files have one upconv and plain 3-channel input."""
    path = make_esrgan_file(tmp_path / "2x.pth", layout="old", scale=2, shuffle_factor=1)
    upscaler = load_upscaler(path)
    assert (upscaler.scale, upscaler.model.shuffle_factor, upscaler.model.upsamples) == (2, 1, 1)
    pixels = _pixels(10, 14)
    with torch.inference_mode():
        expected = _reference(2, shuffle_factor=1)(pixels)
    assert torch.equal(_run(upscaler, pixels), expected)


@pytest.mark.parametrize("container", ["params_ema", "params", "state_dict"])
def test_containers_unwrap(tmp_path: Path, container: str) -> None:
    path = make_esrgan_file(tmp_path / "c.pth", layout="new", container=container)
    assert load_upscaler(path).scale == 4


def test_params_ema_is_preferred_over_params(tmp_path: Path) -> None:
    ema = torch.load(make_esrgan_file(tmp_path / "a.pth", layout="new", seed=1), weights_only=True)
    raw = torch.load(make_esrgan_file(tmp_path / "b.pth", layout="new", seed=2), weights_only=True)
    torch.save({"params": raw, "params_ema": ema}, tmp_path / "both.pth")
    loaded = load_upscaler(tmp_path / "both.pth").model.state_dict()
    assert torch.equal(loaded["conv_first.weight"], ema["conv_first.weight"])


def test_safetensors_loads(tmp_path: Path) -> None:
    pixels = _pixels(8, 8)
    upscaler = load_upscaler(make_esrgan_file(tmp_path / "m.safetensors", layout="old", scale=2))
    with torch.inference_mode():
        expected = _reference(2)(pixels)
    assert upscaler.name == "m"
    assert torch.equal(_run(upscaler, pixels), expected)


def _no_weights(*args: object, **kwargs: object) -> None:
    raise AssertionError("the weights were read")


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_native_scale_is_read_from_shapes_without_the_weights(
    tmp_path: Path, scale: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listings read the scale: a safetensors header, a zip-format pickle memory-mapped."""
    files = [
        make_esrgan_file(tmp_path / f"{layout}.pth", layout=layout, scale=scale)
        for layout in LAYOUTS
    ]
    files.append(make_esrgan_file(tmp_path / "m.safetensors", layout="old", scale=scale))
    files.append(
        make_esrgan_file(tmp_path / "c.pth", layout="trunk", scale=scale, container="params_ema")
    )
    monkeypatch.setattr(upscalers, "load_safetensors", _no_weights)
    monkeypatch.setattr(upscalers, "_read_pickle", _no_weights)
    for path in files:
        assert read_native_scale(path) == scale, path.name


def test_native_scale_of_old_format_and_bad_files(tmp_path: Path) -> None:
    state = torch.load(make_esrgan_file(tmp_path / "m.pth", layout="old"), weights_only=True)
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert read_native_scale(tmp_path / "legacy.pth") == 4
    old_2x = make_esrgan_file(tmp_path / "2x.pth", layout="old", scale=2, shuffle_factor=1)
    assert read_native_scale(old_2x) == 2
    marker = tmp_path / "pwned"
    torch.save({"params_ema": {"x": _Evil(marker)}}, tmp_path / "evil.pth")
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "linear.pth")
    data = make_esrgan_file(tmp_path / "t.safetensors", layout="new").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    for name in ("evil.pth", "linear.pth", "t.safetensors"):
        with pytest.raises(InvalidArgument):
            read_native_scale(tmp_path / name)
    assert not marker.exists()
    with pytest.raises(NotFound):
        read_native_scale(tmp_path / "absent.pth")


def test_upscale_image_size_and_seamless_tiles(tmp_path: Path) -> None:
    upscaler = load_upscaler(make_esrgan_file(tmp_path / "m.pth", layout="new", scale=4))
    image = Image.new("RGB", (40, 24), (200, 30, 90))
    assert upscaler.upscale(image).size == (160, 96)
    pixels = _pixels(24, 40)
    whole = _run(upscaler, pixels)
    tiled = upscaler.upscale_tensor(pixels, tile=16, overlap=4)
    assert torch.allclose(tiled, whole, atol=1e-4, rtol=0)
    # The check has teeth: without context the tile edges show.
    assert (upscaler.upscale_tensor(pixels, tile=16, overlap=0) - whole).abs().max() > 1e-3


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_tiles_with_full_context_are_exact(tmp_path: Path, scale: int) -> None:
    """Odd sizes, unshuffle alignment and stitching: overlap ≥ receptive field ⇒ same result."""
    upscaler = load_upscaler(make_esrgan_file(tmp_path / "m.pth", layout="new", scale=scale, nb=1))
    pixels = _pixels(23, 41)
    whole = _run(upscaler, pixels)
    radius = upscaler.model.receptive_radius
    tiled = upscaler.upscale_tensor(pixels, tile=10, overlap=radius)
    assert tiled.shape == (1, 3, 23 * scale, 41 * scale)
    assert torch.allclose(tiled, whole, atol=1e-6, rtol=0)


def test_upscale_rgb_output(tmp_path: Path) -> None:
    upscaler = load_upscaler(make_esrgan_file(tmp_path / "m.pth", layout="old", scale=2))
    out = upscaler.upscale(Image.new("RGBA", (7, 5)), tile=4, overlap=2)
    assert (out.mode, out.size) == ("RGB", (14, 10))


def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"params_ema": {"x": _Evil(marker)}}, tmp_path / "evil.pth")
    with (tmp_path / "raw.pth").open("wb") as handle:
        pickle.dump(_Evil(marker), handle, protocol=2)
    for name in ("evil.pth", "raw.pth"):
        assert "refused" in _refused(tmp_path / name).message
    assert not marker.exists()


def test_foreign_state_dict_is_refused(tmp_path: Path) -> None:
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "linear.pth")
    assert "not an ESRGAN-family model" in _refused(tmp_path / "linear.pth").message


@pytest.mark.parametrize("layout", LAYOUTS)
def test_missing_and_misshapen_keys_are_refused(tmp_path: Path, layout: str) -> None:
    state = torch.load(make_esrgan_file(tmp_path / "m.pth", layout="new"), weights_only=True)
    missing = {k: v for k, v in state.items() if not k.startswith("conv_hr.")}
    torch.save(to_layout(missing, layout), tmp_path / "missing.pth")
    _refused(tmp_path / "missing.pth")
    state["body.1.rdb2.conv3.weight"] = torch.zeros(32, 7, 3, 3)
    torch.save(to_layout(state, layout), tmp_path / "shape.pth")
    assert "not an ESRGAN-family model" in _refused(tmp_path / "shape.pth").message


def test_truncated_files_are_refused(tmp_path: Path) -> None:
    for name in ("m.pth", "m.safetensors"):
        data = make_esrgan_file(tmp_path / name, layout="new").read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        _refused(tmp_path / name)


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load_upscaler(tmp_path / "absent.pth")
    (tmp_path / "model.bin").write_bytes(b"x")
    _refused(tmp_path / "model.bin")


def test_lanczos_sizes() -> None:
    image = Image.new("RGB", (30, 17), (10, 20, 30))
    assert lanczos(image, 2).size == (60, 34)
    assert lanczos(image, 1.5).size == (45, 26)
    assert resize_to(image, 64, 40).size == (64, 40)
    with pytest.raises(InvalidArgument):
        lanczos(image, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_runs_on_cuda(tmp_path: Path) -> None:
    upscaler = load_upscaler(make_esrgan_file(tmp_path / "m.pth", layout="new", scale=2))
    pixels = _pixels(24, 40)
    expected = upscaler.upscale_tensor(pixels, tile=16, overlap=8)
    upscaler.model.cuda()
    out = upscaler.upscale_tensor(pixels, tile=16, overlap=8)
    assert out.device.type == "cpu"
    assert torch.allclose(out, expected, atol=1e-3, rtol=0)
    upscaler.model.half()
    assert upscaler.upscale(Image.new("RGB", (40, 24))).size == (80, 48)
