"""The tiny SD model: seeded weights, its A1111 single file, and the SD 1.5 configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from services.common.sd.checkpoint_layout import PREFIXES
from services.common.sd.checkpoint_loader import load_pipeline
from services.common.sd.sd_configs import SD15, TINY, SDArchitecture, write_config_folder
from services.generator.tiny_model import TinyModelFiles, build_tiny_pipeline

PROMPT = "a photo of a cat"


def _state(pipe: StableDiffusionPipeline, part: str) -> dict[str, torch.Tensor]:
    return getattr(pipe, part).state_dict()


def _render(pipe: StableDiffusionPipeline, seed: int) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(seed)
    result = pipe(
        PROMPT, num_inference_steps=2, height=64, width=64, generator=generator, output_type="np"
    )
    return result.images


@pytest.fixture(scope="module")
def single_file_pipe(
    tiny_model_files: TinyModelFiles, model_config_root: Path, clip_tokenizer_dir: Path
) -> StableDiffusionPipeline:
    return load_pipeline(
        tiny_model_files.single_file,
        config_root=model_config_root,
        tokenizer_dir=clip_tokenizer_dir,
    )


@pytest.fixture(scope="module")
def folder_pipe(
    tiny_model_files: TinyModelFiles, model_config_root: Path, clip_tokenizer_dir: Path
) -> StableDiffusionPipeline:
    return load_pipeline(
        tiny_model_files.diffusers_dir,
        config_root=model_config_root,
        tokenizer_dir=clip_tokenizer_dir,
    )


def test_same_seed_gives_identical_weights_and_another_seed_does_not(
    clip_tokenizer_dir: Path,
) -> None:
    first = build_tiny_pipeline(clip_tokenizer_dir, seed=3)
    again = build_tiny_pipeline(clip_tokenizer_dir, seed=3)
    other = build_tiny_pipeline(clip_tokenizer_dir, seed=4)
    for part in ("unet", "vae", "text_encoder"):
        a, b, c = _state(first, part), _state(again, part), _state(other, part)
        assert all(torch.equal(a[k], b[k]) for k in a), part
        assert not all(torch.equal(a[k], c[k]) for k in a), part


def test_single_file_is_small_and_in_the_a1111_layout(tiny_model_files: TinyModelFiles) -> None:
    assert 1_000_000 < tiny_model_files.single_file.stat().st_size < 25_000_000
    with safe_open(str(tiny_model_files.single_file), framework="pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
    assert all(key.startswith(PREFIXES) for key in keys)
    for prefix in PREFIXES:
        assert any(key.startswith(prefix) for key in keys), prefix
    assert "model.diffusion_model.output_blocks.11.0.skip_connection.weight" in keys
    assert "first_stage_model.decoder.up.3.upsample.conv.weight" in keys
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys
    declared = SDArchitecture.from_dict(json.loads(metadata["sdstack.architecture"]))
    assert declared == TINY


def test_single_file_round_trips_every_tensor(
    single_file_pipe: StableDiffusionPipeline, clip_tokenizer_dir: Path
) -> None:
    original = build_tiny_pipeline(clip_tokenizer_dir, seed=0)
    for part in ("unet", "vae", "text_encoder"):
        want, got = _state(original, part), _state(single_file_pipe, part)
        assert want.keys() == got.keys(), part
        unequal = [k for k in want if not torch.equal(want[k], got[k])]
        assert unequal == [], part


def test_single_file_and_folder_draw_the_same_pixels(
    single_file_pipe: StableDiffusionPipeline, folder_pipe: StableDiffusionPipeline
) -> None:
    from_file = _render(single_file_pipe, seed=1)
    from_folder = _render(folder_pipe, seed=1)
    assert from_file.shape == (1, 64, 64, 3)
    assert float(np.abs(from_file - from_folder).max()) == 0.0


def test_a_seed_repeats_and_another_seed_differs(
    single_file_pipe: StableDiffusionPipeline,
) -> None:
    first = _render(single_file_pipe, seed=1)
    assert np.array_equal(first, _render(single_file_pipe, seed=1))
    assert float(np.abs(first - _render(single_file_pipe, seed=2)).max()) > 0.01


def test_loaded_pipeline_has_no_safety_checker(single_file_pipe: StableDiffusionPipeline) -> None:
    assert single_file_pipe.safety_checker is None
    assert single_file_pipe.unet.dtype == torch.float32


def test_sd15_configs_build_the_real_sd15_components(
    tmp_path: Path, clip_tokenizer_dir: Path
) -> None:
    folder = write_config_folder(SD15, clip_tokenizer_dir, tmp_path / "sd15")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    counts = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, text)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]
    assert text.config.hidden_act == "quick_gelu"
    scheduler = PNDMScheduler.from_pretrained(folder, subfolder="scheduler")
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.steps_offset == 1
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    assert len(tokenizer) == 49408
    index = json.loads((folder / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None]
    assert index["requires_safety_checker"] is False


def test_architecture_round_trips_through_json() -> None:
    for arch in (SD15, TINY):
        assert SDArchitecture.from_dict(json.loads(json.dumps(arch.to_dict()))) == arch
    assert SD15.config_hash() != TINY.config_hash()


@pytest.mark.parametrize(
    "change",
    [
        {"unet": {"block_out_channels": [32, 64]}},
        {"vae": {"block_out_channels": [32, 32, 64, 50]}},
        {"text_encoder": {"num_attention_heads": 5}},
        {"unet": {"sample_size": "8"}},
        {"unet": {"unknown": 1}},
        {"text_encoder": {"num_hidden_layers": 100_000}},
    ],
)
def test_malformed_architectures_are_rejected(change: dict[str, dict[str, object]]) -> None:
    data = TINY.to_dict()
    for part, values in change.items():
        data[part] = {**data[part], **values}
    with pytest.raises(ValueError):
        SDArchitecture.from_dict(data)
