"""Loading single files safely: .ckpt through the safe unpickler, bad files refused by name."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file

from services.common.errors import InvalidArgument, NotFound
from services.common.sd.checkpoint_layout import unet_key, vae_key
from services.common.sd.checkpoint_loader import (
    check_single_file,
    expected_shapes,
    load_pipeline,
    load_weights_only,
)
from services.common.sd.sd_configs import SD15, TINY
from services.generator.tiny_model import TinyModelFiles

ARCH_KEY = "sdstack.architecture"


class _Evil:
    """Unpickling this runs a shell command: what a malicious `.ckpt` does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def tiny_tensors(tiny_model_files: TinyModelFiles) -> Tensors:
    return load_file(str(tiny_model_files.single_file))


Tensors = dict[str, torch.Tensor]
Loader = Callable[..., StableDiffusionPipeline]


@pytest.fixture
def load(model_config_root: Path, clip_tokenizer_dir: Path) -> Loader:
    def _load(path: Path, **kwargs: Any) -> StableDiffusionPipeline:
        return load_pipeline(
            path, config_root=model_config_root, tokenizer_dir=clip_tokenizer_dir, **kwargs
        )

    return _load


def _render(pipe: StableDiffusionPipeline) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(1)
    out = pipe(
        "a cat", num_inference_steps=2, height=64, width=64, generator=generator, output_type="np"
    )
    return out.images


def _rule(excinfo: pytest.ExceptionInfo[InvalidArgument]) -> str:
    violation = excinfo.value.violations[0]
    assert violation.field == "model"
    return violation.rule


def _write_raw(path: Path, header: dict[str, object], data: bytes) -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


# --- .ckpt ------------------------------------------------------------------------------------


def test_plain_state_dict_ckpt_loads_and_draws_like_the_single_file(
    tmp_path: Path, tiny_model_files: TinyModelFiles, tiny_tensors: Tensors, load: Loader
) -> None:
    ckpt = tmp_path / "tiny.ckpt"
    torch.save(tiny_tensors, ckpt)
    from_ckpt = load(ckpt, architecture=TINY)
    from_file = load(tiny_model_files.single_file)
    assert float(np.abs(_render(from_ckpt) - _render(from_file)).max()) == 0.0


def test_a1111_style_wrapped_ckpt_declares_its_architecture(
    tmp_path: Path, model_config_root: Path, tiny_tensors: Tensors, load: Loader
) -> None:
    ckpt = tmp_path / "wrapped.ckpt"
    wrapped = {"state_dict": tiny_tensors, "global_step": 10, ARCH_KEY: json.dumps(TINY.to_dict())}
    torch.save(wrapped, ckpt)
    pipe = load(ckpt)
    assert pipe.unet.config.block_out_channels == list(TINY.unet.block_out_channels)
    assert list(model_config_root.glob("*.safetensors")) == []  # the temporary copy is gone


def test_malicious_pickle_is_refused_and_never_run(
    tmp_path: Path, tiny_tensors: Tensors, load: Loader
) -> None:
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": dict(tiny_tensors), "payload": _Evil(marker)}, ckpt)
    with pytest.raises(InvalidArgument) as excinfo:
        load(ckpt, architecture=TINY)
    assert "refused" in _rule(excinfo)
    assert not marker.exists()
    torch.load(ckpt, weights_only=False)  # proves the payload is live: an unsafe load runs it
    assert marker.exists()


def test_ckpt_of_another_architecture_is_refused(
    tmp_path: Path, tiny_tensors: Tensors, load: Loader
) -> None:
    """Weights that fit no known SD 1.x architecture get the SD 1.5 check's message."""
    odd = dict(tiny_tensors)
    odd["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(48, 4, 3, 3)
    ckpt = tmp_path / "odd.ckpt"
    torch.save(odd, ckpt)
    with pytest.raises(InvalidArgument) as excinfo:
        load(ckpt)
    assert "not an SD 1.x checkpoint" in _rule(excinfo)


def test_ckpt_whose_state_dict_contains_itself_is_refused(tmp_path: Path, load: Loader) -> None:
    cyclic: dict[str, object] = {}
    cyclic["state_dict"] = cyclic
    ckpt = tmp_path / "cyclic.ckpt"
    torch.save(cyclic, ckpt)
    with pytest.raises(InvalidArgument) as excinfo:
        load(ckpt)
    assert "no U-Net weights" in _rule(excinfo)


def test_corrupt_ckpt_is_refused(tmp_path: Path, load: Loader) -> None:
    ckpt = tmp_path / "junk.ckpt"
    ckpt.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    with pytest.raises(InvalidArgument) as excinfo:
        load(ckpt)
    assert "corrupt .ckpt" in _rule(excinfo)


@pytest.mark.parametrize(
    "data",
    [b"hs\xc2\x99\xc3\x8d", b"\x80\x02}q\x00(X", b"\x80\x02h\x07.", b"\x80\x02K"],
    ids=["bad-memo-index", "truncated-dict", "memo-get-empty", "truncated-int"],
)
def test_a_garbled_pickle_is_a_corrupt_file_naming_the_field(tmp_path: Path, data: bytes) -> None:
    """Whatever the weights-only unpickler raises on bytes that are not a PyTorch pickle
    (KeyError, IndexError, EOFError, …), the caller gets INVALID_ARGUMENT, never a crash."""
    path = tmp_path / "garbled.pt"
    path.write_bytes(data)
    with pytest.raises(InvalidArgument) as excinfo:
        load_weights_only(path, "vae")
    violation = excinfo.value.violations[0]
    assert violation.field == "vae"
    assert "corrupt .pt file" in violation.rule


# --- broken .safetensors ----------------------------------------------------------------------


def test_truncated_safetensors_is_refused(
    tmp_path: Path, tiny_model_files: TinyModelFiles, load: Loader
) -> None:
    data = tiny_model_files.single_file.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidArgument) as excinfo:
        load(cut)
    assert "truncated" in _rule(excinfo)


def test_file_shorter_than_the_length_field_is_refused(tmp_path: Path, load: Loader) -> None:
    stub = tmp_path / "stub.safetensors"
    stub.write_bytes(b"\x10\x00")
    with pytest.raises(InvalidArgument) as excinfo:
        load(stub)
    assert "truncated" in _rule(excinfo)


def test_header_length_beyond_the_file_is_refused(tmp_path: Path, load: Loader) -> None:
    liar = tmp_path / "liar.safetensors"
    liar.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(InvalidArgument) as excinfo:
        load(liar)
    assert "lying" in _rule(excinfo)


def test_header_whose_shape_does_not_match_its_offsets_is_refused(
    tmp_path: Path, load: Loader
) -> None:
    header = {"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 16]}}
    liar = _write_raw(tmp_path / "shape.safetensors", header, b"\x00" * 16)
    with pytest.raises(InvalidArgument) as excinfo:
        load(liar)
    assert "lying safetensors header: tensor w" in _rule(excinfo)


def test_header_pointing_past_the_end_is_refused(tmp_path: Path, load: Loader) -> None:
    header = {"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}}
    liar = _write_raw(tmp_path / "past.safetensors", header, b"\x00" * 16)
    with pytest.raises(InvalidArgument) as excinfo:
        load(liar)
    assert "tensor w ends at byte 400" in _rule(excinfo)


def test_header_that_is_not_json_is_refused(tmp_path: Path, load: Loader) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(InvalidArgument) as excinfo:
        load(junk)
    assert "not valid JSON" in _rule(excinfo)


# --- other architectures and layouts ----------------------------------------------------------


def test_random_keys_are_not_an_sd1_checkpoint(tmp_path: Path, load: Loader) -> None:
    other = tmp_path / "other.safetensors"
    save_file({"encoder.layer.0.weight": torch.zeros(4, 4)}, str(other))
    with pytest.raises(InvalidArgument) as excinfo:
        load(other)
    assert "not an SD 1.x checkpoint" in _rule(excinfo)
    assert "no U-Net weights" in _rule(excinfo)


def test_sd2_style_checkpoint_is_named(tmp_path: Path, load: Loader) -> None:
    sd2 = tmp_path / "sd2.safetensors"
    tensors = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
        "cond_stage_model.model.token_embedding.weight": torch.zeros(8, 4),
    }
    save_file(tensors, str(sd2))
    with pytest.raises(InvalidArgument) as excinfo:
        load(sd2)
    assert "SD 2.x" in _rule(excinfo)


def test_tiny_weights_without_metadata_are_recognised(
    tmp_path: Path, tiny_tensors: Tensors, load: Loader
) -> None:
    """A file that declares no architecture is matched against the known ones (SD 1.5 first,
    then the tiny model), so the tiny model also travels as a plain file or `.ckpt`."""
    bare = tmp_path / "bare.safetensors"
    save_file(tiny_tensors, str(bare))
    assert check_single_file(bare) == TINY
    assert load(bare).unet.config.block_out_channels[0] == TINY.unet.block_out_channels[0]
    with pytest.raises(InvalidArgument) as excinfo:
        check_single_file(bare, SD15)
    assert "U-Net input convolution is 32×4 channels, sd15 needs 320×4" in _rule(excinfo)


def test_missing_and_misshapen_tensors_are_named(tmp_path: Path, tiny_tensors: Tensors) -> None:
    metadata = {ARCH_KEY: json.dumps(TINY.to_dict())}
    gone = "first_stage_model.decoder.conv_out.bias"
    missing = tmp_path / "missing.safetensors"
    save_file({k: v for k, v in tiny_tensors.items() if k != gone}, str(missing), metadata)
    with pytest.raises(InvalidArgument) as excinfo:
        check_single_file(missing)
    assert f"1 tensors missing: {gone}" in _rule(excinfo)

    bent = "model.diffusion_model.out.2.bias"
    misshapen = tmp_path / "misshapen.safetensors"
    save_file({**tiny_tensors, bent: torch.zeros(5)}, str(misshapen), metadata)
    with pytest.raises(InvalidArgument) as excinfo:
        check_single_file(misshapen)
    assert f"wrong shapes in {bent}" in _rule(excinfo)


def test_malformed_architecture_metadata_is_refused(tmp_path: Path, tiny_tensors: Tensors) -> None:
    bad = tmp_path / "bad-meta.safetensors"
    save_file(tiny_tensors, str(bad), {ARCH_KEY: "{not json"})
    with pytest.raises(InvalidArgument) as excinfo:
        check_single_file(bad)
    assert "malformed sdstack.architecture" in _rule(excinfo)


def test_real_file_extras_and_fp16_weights_load_as_fp32(
    tmp_path: Path, tiny_tensors: Tensors, load: Loader
) -> None:
    """Real SD 1.x files carry schedule buffers and EMA keys, and are often stored in fp16."""
    half = {k: v.half() if v.is_floating_point() else v for k, v in tiny_tensors.items()}
    half |= {"alphas_cumprod": torch.ones(1000), "model_ema.decay": torch.tensor(0.9999)}
    path = tmp_path / "half.safetensors"
    save_file(half, str(path), {ARCH_KEY: json.dumps(TINY.to_dict())})
    pipe = load(path)
    assert pipe.unet.dtype == torch.float32
    key = "model.diffusion_model.out.2.weight"
    assert torch.equal(pipe.unet.conv_out.weight, half[key].float())
    assert _render(pipe).shape == (1, 64, 64, 3)


def test_missing_file_unknown_type_and_bare_folder(tmp_path: Path, load: Loader) -> None:
    with pytest.raises(NotFound):
        load(tmp_path / "absent.safetensors")
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"x")
    with pytest.raises(InvalidArgument):
        load(odd)
    with pytest.raises(InvalidArgument) as excinfo:
        load(tmp_path)
    assert "model_index.json" in _rule(excinfo)


def test_config_folder_is_written_once_per_architecture(
    model_config_root: Path, tiny_model_files: TinyModelFiles, load: Loader
) -> None:
    load(tiny_model_files.single_file)
    load(tiny_model_files.single_file)
    assert (model_config_root / TINY.config_hash() / "model_index.json").is_file()
    assert [p for p in model_config_root.iterdir() if p.name.startswith(".config-")] == []


# --- text-encoder keys without `text_model.` ---------------------------------------------------

TEXT_MODEL = "cond_stage_model.transformer.text_model."
TEXT = "cond_stage_model.transformer."


def _without_text_model(tensors: Tensors) -> Tensors:
    """What diffusers' `convert_diffusers_to_original_stable_diffusion.py` writes for a folder
    saved by transformers 5: `cond_stage_model.transformer.encoder.…`, no `text_model.`."""
    flat = {TEXT + k.removeprefix(TEXT_MODEL) if k.startswith(TEXT_MODEL) else k: v
            for k, v in tensors.items()}  # fmt: skip
    assert not any(k.startswith(TEXT_MODEL) for k in flat)
    assert TEXT + "encoder.layers.0.self_attn.q_proj.weight" in flat
    return flat


def _save(tensors: Tensors, path: Path, declared: bool) -> Path:
    if path.suffix == ".ckpt":
        torch.save(tensors, path)
    else:
        save_file(tensors, str(path), {ARCH_KEY: json.dumps(TINY.to_dict())} if declared else None)
    return path


@pytest.mark.parametrize(
    ("name", "declared"),
    [("flat.safetensors", False), ("flat.safetensors", True), ("flat.ckpt", False)],
    ids=["bare-safetensors", "declared-safetensors", "ckpt"],
)
def test_text_encoder_keys_without_text_model_load_and_draw_the_same(
    tmp_path: Path,
    model_config_root: Path,
    tiny_model_files: TinyModelFiles,
    tiny_tensors: Tensors,
    load: Loader,
    name: str,
    declared: bool,
) -> None:
    """Such a file (A1111 renames its keys and loads it) was refused, blaming the U-Net width
    when it declared no architecture; it must load the very same text encoder."""
    flat = _save(_without_text_model(tiny_tensors), tmp_path / name, declared)
    if flat.suffix == ".safetensors":
        assert check_single_file(flat) == TINY
    renamed = load(flat)
    usual = load(tiny_model_files.single_file)
    assert renamed.unet.dtype == torch.float32
    usual_text = usual.text_encoder.state_dict()
    for key, tensor in renamed.text_encoder.state_dict().items():
        assert torch.equal(tensor, usual_text[key]), key
    assert np.array_equal(_render(renamed), _render(usual))
    assert list(model_config_root.glob("*.safetensors")) == []  # the renamed copy is gone


@pytest.mark.parametrize("declared", [False, True], ids=["bare", "declared"])
@pytest.mark.parametrize(
    "kept",
    [(), ("embeddings.position_ids",), ("text_model.embeddings.position_ids",)],
    ids=["none-kept", "flat-leftover", "leftover"],
)
def test_a_missing_text_encoder_is_named(
    tmp_path: Path, tiny_tensors: Tensors, declared: bool, kept: tuple[str, ...]
) -> None:
    """A pruned text encoder (perhaps with a leftover `position_ids`) is what is wrong, not the
    U-Net: a tiny file declaring nothing was checked as SD 1.5 and blamed the U-Net's width."""
    pruned = {k: v for k, v in tiny_tensors.items() if not k.startswith(TEXT)}
    pruned |= {TEXT + key: torch.arange(77).unsqueeze(0) for key in kept}
    path = _save(pruned, tmp_path / "pruned.safetensors", declared)
    with pytest.raises(InvalidArgument) as excinfo:
        check_single_file(path)
    rule = _rule(excinfo)
    assert "CLIP text encoder" in rule
    assert "U-Net" not in rule
    assert "tiny-sd1 layout expected" in rule


def test_a_flat_text_encoder_with_a_missing_tensor_is_named_by_its_usual_name(
    tmp_path: Path, tiny_tensors: Tensors
) -> None:
    flat = _without_text_model(tiny_tensors)
    del flat[TEXT + "final_layer_norm.weight"]
    path = _save(flat, tmp_path / "flat.safetensors", declared=False)
    with pytest.raises(InvalidArgument) as excinfo:
        check_single_file(path)
    expected = (
        f"CLIP text encoder incomplete, 1 tensors missing: {TEXT_MODEL}final_layer_norm.weight"
    )
    assert expected in _rule(excinfo)


def test_a_text_encoder_tensor_under_both_names_is_refused(
    tmp_path: Path, tiny_tensors: Tensors
) -> None:
    bias = tiny_tensors[TEXT_MODEL + "final_layer_norm.bias"]
    both = {**tiny_tensors, TEXT + "final_layer_norm.bias": bias.clone()}
    path = _save(both, tmp_path / "both.safetensors", declared=True)
    with pytest.raises(InvalidArgument) as excinfo:
        check_single_file(path)
    rule = _rule(excinfo)
    assert "both with and without `text_model.`" in rule
    assert f"{TEXT_MODEL}final_layer_norm.bias" in rule


# --- the SD 1.5 key layout --------------------------------------------------------------------


def test_sd15_layout_has_the_real_compvis_names() -> None:
    shapes = expected_shapes(SD15)
    prefix = "model.diffusion_model."
    assert shapes[prefix + "input_blocks.0.0.weight"] == (320, 4, 3, 3)
    assert shapes[prefix + "input_blocks.3.0.op.weight"] == (320, 320, 3, 3)
    assert shapes[prefix + "output_blocks.2.1.conv.weight"] == (1280, 1280, 3, 3)
    assert shapes[prefix + "output_blocks.5.2.conv.weight"] == (1280, 1280, 3, 3)
    assert shapes[prefix + "output_blocks.11.0.skip_connection.weight"] == (320, 640, 1, 1)
    attn2 = prefix + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert shapes[attn2] == (320, 768)
    assert shapes["first_stage_model.encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    assert shapes["first_stage_model.decoder.up.0.block.0.nin_shortcut.weight"] == (128, 256, 1, 1)
    token = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    assert shapes[token] == (49408, 768)
    assert len(shapes) == 1130


def test_key_mapping_examples() -> None:
    attention_up = frozenset({1, 2, 3})
    assert unet_key("up_blocks.0.upsamplers.0.conv.bias", 2, attention_up) == (
        "output_blocks.2.1.conv.bias"
    )
    assert unet_key("mid_block.resnets.1.time_emb_proj.weight", 2, attention_up) == (
        "middle_block.2.emb_layers.1.weight"
    )
    assert vae_key("decoder.up_blocks.0.upsamplers.0.conv.weight", 4) == (
        "decoder.up.3.upsample.conv.weight"
    )
    with pytest.raises(KeyError):
        unet_key("add_embedding.linear_1.weight", 2, attention_up)
