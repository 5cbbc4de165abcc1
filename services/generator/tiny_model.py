"""A tiny SD 1.x model with seeded random weights: the test fixture and the offline demo model.

Real diffusers/transformers classes in the SD 1.x topology with small widths (`sd_configs.TINY`),
so the real loading code paths (diffusers folder and A1111 single file) are what tests exercise.
The same seed always gives byte-identical weights.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from services.common.sd import sd_configs
from services.common.sd.checkpoint_layout import save_single_file
from services.common.sd.sd_configs import TINY, SDArchitecture

DIFFUSERS_DIR = "tiny-sd-diffusers"
SINGLE_FILE = "tiny-sd.safetensors"


@dataclass(frozen=True)
class TinyModelFiles:
    diffusers_dir: Path
    single_file: Path


def build_pipeline(
    arch: SDArchitecture, tokenizer_dir: Path, seed: int = 0
) -> StableDiffusionPipeline:
    """Random-weight fp32 pipeline of `arch`; each component is seeded on its own."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(sd_configs.unet_config(arch))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL.from_config(sd_configs.vae_config(arch))
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**sd_configs.text_encoder_config(arch)))
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    scheduler = PNDMScheduler.from_config(sd_configs.scheduler_config())
    pipe = StableDiffusionPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_pipeline(tokenizer_dir: Path, seed: int = 0) -> StableDiffusionPipeline:
    return build_pipeline(TINY, tokenizer_dir, seed)


def save_tiny_model(out_dir: Path, tokenizer_dir: Path, seed: int = 0) -> TinyModelFiles:
    """Save the tiny model as a diffusers folder and as one A1111-layout `.safetensors`."""
    pipe = build_tiny_pipeline(tokenizer_dir, seed)
    files = TinyModelFiles(out_dir / DIFFUSERS_DIR, out_dir / SINGLE_FILE)
    pipe.save_pretrained(str(files.diffusers_dir), safe_serialization=True)
    save_single_file(pipe, files.single_file, TINY)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the tiny SD 1.x demo/test model.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tokenizer", type=Path, required=True, help="CLIP tokenizer folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    files = save_tiny_model(args.out_dir, args.tokenizer, args.seed)
    sys.stdout.write(f"{files.single_file}\n{files.diffusers_dir}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
