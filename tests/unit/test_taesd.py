"""TAESD decoders for previews: both file layouts, refusals, full-size pictures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from services.common.errors import InvalidArgument
from services.generator.taesd import load_decoder, make_taesd_file, taesd_preview

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("layout", "suffix"),
    [("original", ".safetensors"), ("original", ".pth"), ("diffusers", ".safetensors")],
)
def test_every_layout_loads_the_same_decoder(tmp_path: Path, layout: str, suffix: str) -> None:
    reference = load_decoder(
        make_taesd_file(tmp_path / "ref.safetensors", seed=4), CPU, torch.float32
    )
    decoder = load_decoder(
        make_taesd_file(tmp_path / f"taesd{suffix}", seed=4, layout=layout), CPU, torch.float32
    )
    latents = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(decoder(latents), reference(latents))


def test_a_preview_is_the_picture_size(tmp_path: Path) -> None:
    decoder = load_decoder(make_taesd_file(tmp_path / "t.safetensors"), CPU, torch.float32)
    preview = taesd_preview(decoder, torch.randn(2, 4, 8, 12))
    assert (preview.mode, preview.size) == ("RGB", (96, 64))


def test_other_files_are_refused(tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}, str(stranger))
    with pytest.raises(InvalidArgument) as refused:
        load_decoder(stranger, CPU, torch.float32)
    assert refused.value.violations[0].field == "model"
    assert "not a TAESD decoder" in refused.value.violations[0].rule
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(make_taesd_file(tmp_path / "whole.safetensors").read_bytes()[:100])
    with pytest.raises(InvalidArgument, match="corrupt"):
        load_decoder(truncated, CPU, torch.float32)
