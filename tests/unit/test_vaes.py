"""Stand-alone VAE files (CompVis layout, bare or prefixed; diffusers names) swapped into the
tiny pipeline; unsafe and mismatched files refused by name."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from safetensors.torch import load_file, save_file

from services.common.errors import InvalidArgument, NotFound
from services.generator.tiny_model import TinyModelFiles
from services.generator.vaes import bound_memory, load_vae, make_vae_file


class _Evil:
    """Unpickling this runs a shell command: what a malicious `.pt` does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _render(pipe: StableDiffusionPipeline) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(1)
    out = pipe(
        "a photo of a cat",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=generator,
        output_type="np",
    )
    return out.images


def _rule(excinfo: pytest.ExceptionInfo[InvalidArgument]) -> str:
    violation = excinfo.value.violations[0]
    assert violation.field == "vae"
    return violation.rule


def _same_weights(a: AutoencoderKL, b: AutoencoderKL) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def pipe(tiny_model_files: TinyModelFiles) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(
        str(tiny_model_files.diffusers_dir), local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def original_vae(pipe: StableDiffusionPipeline) -> Iterator[AutoencoderKL]:
    vae = pipe.vae
    yield vae
    pipe.vae = vae


@pytest.mark.parametrize(
    ("name", "prefix"),
    [("bare.safetensors", False), ("prefixed.safetensors", True), ("bare.pt", False)],
)
def test_compvis_file_round_trips_exactly(
    original_vae: AutoencoderKL, tmp_path: Path, name: str, prefix: bool
) -> None:
    path = make_vae_file(original_vae, tmp_path / name, seed=0, prefix=prefix, strength=0.0)
    loaded = load_vae(path, original_vae)
    assert loaded is not original_vae
    assert _same_weights(loaded, original_vae)
    assert dict(loaded.config) == dict(original_vae.config)
    assert (loaded.dtype, loaded.device) == (original_vae.dtype, original_vae.device)


def test_diffusers_names_and_full_checkpoints_load(
    original_vae: AutoencoderKL, tiny_model_files: TinyModelFiles, tmp_path: Path
) -> None:
    path = tmp_path / "diffusers.safetensors"
    save_file({k: v.contiguous() for k, v in original_vae.state_dict().items()}, str(path))
    assert _same_weights(load_vae(path, original_vae), original_vae)
    assert _same_weights(load_vae(tiny_model_files.single_file, original_vae), original_vae)


def test_training_leftovers_are_ignored(original_vae: AutoencoderKL, tmp_path: Path) -> None:
    """Original kl-f8 checkpoints carry the discriminator/LPIPS (`loss.`) and EMA counters."""
    exact = make_vae_file(original_vae, tmp_path / "exact.pt", seed=0, strength=0.0)
    state = torch.load(exact, weights_only=True)["state_dict"]
    state |= {"loss.discriminator.main.0.weight": torch.zeros(2), "model_ema.decay": torch.ones(())}
    path = tmp_path / "trained.ckpt"
    torch.save({"state_dict": state, "global_step": 3}, path)
    assert _same_weights(load_vae(path, original_vae), original_vae)


def test_loaded_vae_takes_the_dtype_of_like(original_vae: AutoencoderKL, tmp_path: Path) -> None:
    like = copy.deepcopy(original_vae).to(torch.bfloat16)
    loaded = load_vae(make_vae_file(original_vae, tmp_path / "v.safetensors", seed=0), like)
    assert loaded.dtype == torch.bfloat16


def test_other_vae_changes_the_image_and_swapping_back_restores_it(
    pipe: StableDiffusionPipeline, original_vae: AutoencoderKL, tmp_path: Path
) -> None:
    base = _render(pipe)
    other = load_vae(
        make_vae_file(original_vae, tmp_path / "other.safetensors", seed=3), original_vae
    )
    assert not _same_weights(other, original_vae)
    pipe.vae = other
    assert not np.array_equal(_render(pipe), base)
    pipe.vae = original_vae
    assert np.array_equal(_render(pipe), base)


def test_malicious_pickle_is_refused_without_running_it(
    original_vae: AutoencoderKL, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"encoder.conv_in.weight": _Evil(marker)}}, path)
    with pytest.raises(InvalidArgument) as excinfo:
        load_vae(path, original_vae)
    assert "refused" in _rule(excinfo)
    assert not marker.exists()


def test_vae_of_another_shape_is_refused(original_vae: AutoencoderKL, tmp_path: Path) -> None:
    config = {**original_vae.config, "block_out_channels": [32, 64, 64, 64]}
    wider = AutoencoderKL.from_config(config)
    path = make_vae_file(wider, tmp_path / "wide.safetensors", seed=0)
    with pytest.raises(InvalidArgument) as excinfo:
        load_vae(path, original_vae)
    assert "made for another model architecture: wrong shapes" in _rule(excinfo)


def test_incomplete_or_foreign_files_are_refused(
    original_vae: AutoencoderKL, tmp_path: Path
) -> None:
    full = load_file(str(make_vae_file(original_vae, tmp_path / "full.safetensors", seed=0)))
    cases = {
        "missing.safetensors": {k: v for k, v in full.items() if "mid.attn_1" not in k},
        "extra.safetensors": {**full, "decoder.up.9.block.0.conv1.weight": torch.zeros(1)},
        "unet.safetensors": {"model.diffusion_model.out.2.weight": torch.zeros(1)},
    }
    words = {"missing.safetensors": "20 missing", "extra.safetensors": "1 unexpected"}
    for name, tensors in cases.items():
        path = tmp_path / name
        save_file(tensors, str(path))
        with pytest.raises(InvalidArgument) as excinfo:
            load_vae(path, original_vae)
        assert words.get(name, "not a VAE file") in _rule(excinfo), _rule(excinfo)
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes((tmp_path / "full.safetensors").read_bytes()[:1000])
    with pytest.raises(InvalidArgument, match="truncated"):
        load_vae(truncated, original_vae)
    text = tmp_path / "vae.txt"
    text.write_text("not weights")
    with pytest.raises(InvalidArgument, match="unsupported VAE file type"):
        load_vae(text, original_vae)
    with pytest.raises(NotFound):
        load_vae(tmp_path / "absent.safetensors", original_vae)


@pytest.fixture
def bounded_vae(pipe: StableDiffusionPipeline) -> AutoencoderKL:
    """A copy of the tiny VAE (latent factor 8) that tiles pictures with a side over 128 px."""
    vae = copy.deepcopy(pipe.vae)
    bound_memory(vae, 128)
    return vae


def test_pictures_up_to_the_tile_size_decode_whole(
    pipe: StableDiffusionPipeline, bounded_vae: AutoencoderKL
) -> None:
    latents = torch.randn(2, 4, 16, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = pipe.vae.decode(latents).sample
        bounded = bounded_vae.decode(latents).sample
    assert torch.allclose(bounded, whole, atol=1e-4)  # one picture at a time: rounding only


def test_larger_pictures_go_through_the_vae_in_tiles_one_picture_at_a_time(
    bounded_vae: AutoencoderKL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 256×192 picture (over the 128 px tile): diffusers' tiled paths decode and encode it,
    each picture of the batch on its own, and the sizes come out right."""
    calls: list[tuple[str, tuple[int, ...]]] = []
    for name in ("tiled_decode", "_tiled_encode"):
        method = getattr(bounded_vae, name)

        def spy(x: torch.Tensor, *args: object, _name: str = name, _method=method, **kw: object):
            calls.append((_name, tuple(x.shape)))
            return _method(x, *args, **kw)

        monkeypatch.setattr(bounded_vae, name, spy)
    latents = torch.randn(2, 4, 32, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pixels = bounded_vae.decode(latents).sample
        encoded = bounded_vae.encode(pixels).latent_dist.mode()
    assert pixels.shape == (2, 3, 256, 192) and encoded.shape == latents.shape
    assert (
        calls == [("tiled_decode", (1, 4, 32, 24))] * 2 + [("_tiled_encode", (1, 3, 256, 192))] * 2
    )


def test_tile_size_zero_never_tiles(bounded_vae: AutoencoderKL) -> None:
    bound_memory(bounded_vae, 0)
    assert not bounded_vae.use_tiling
