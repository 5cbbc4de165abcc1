"""SD 1.x component configurations, written locally so single files load with no network.

A single-file checkpoint carries weights only. diffusers' `from_single_file` needs a folder with
each component's config and the tokenizer; without one it asks the Hugging Face hub. This module
describes an SD 1.x-topology model (`SDArchitecture`: 4 U-Net blocks, 3 of them with cross
attention; a 4-block VAE; a CLIP text encoder) and writes that folder. `SD15` holds the real SD 1.5
values; `TINY` shrinks the widths and keeps the topology, so the same key mapping serves both.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SD1_BLOCKS = 4
DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
UP_BLOCK_TYPES = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
PIPELINE_CLASS = "StableDiffusionPipeline"
SCHEDULER_CLASS = "PNDMScheduler"
# Bounds on untrusted metadata: checking a file builds its architecture on the meta device.
MAX_TEXT_LAYERS = 48
MAX_LAYERS_PER_BLOCK = 4


@dataclass(frozen=True)
class UNetSpec:
    block_out_channels: tuple[int, ...]
    attention_head_dim: int
    cross_attention_dim: int
    sample_size: int
    layers_per_block: int = 2
    norm_num_groups: int = 32
    in_channels: int = 4


@dataclass(frozen=True)
class VAESpec:
    block_out_channels: tuple[int, ...]
    sample_size: int
    scaling_factor: float = 0.18215
    latent_channels: int = 4
    layers_per_block: int = 2
    norm_num_groups: int = 32


@dataclass(frozen=True)
class TextEncoderSpec:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    projection_dim: int
    max_position_embeddings: int = 77
    vocab_size: int = 49408
    hidden_act: str = "quick_gelu"


@dataclass(frozen=True)
class SDArchitecture:
    """Everything that sets the shapes of an SD 1.x-topology model's weights."""

    name: str
    unet: UNetSpec
    vae: VAESpec
    text_encoder: TextEncoderSpec

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SDArchitecture:
        """Build from `to_dict` output; ValueError on anything malformed (it may be untrusted)."""
        try:
            arch = cls(
                name=str(data["name"]),
                unet=_spec(UNetSpec, data["unet"]),
                vae=_spec(VAESpec, data["vae"]),
                text_encoder=_spec(TextEncoderSpec, data["text_encoder"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed architecture: {exc!r}") from exc
        arch.check()
        return arch

    def config_hash(self) -> str:
        """Content hash of the shapes (not the name): the config folder's cache key."""
        data = self.to_dict()
        data.pop("name")
        blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def check(self) -> None:
        """Raise ValueError when the values cannot describe an SD 1.x-topology model."""
        problems = _problems(self)
        if problems:
            raise ValueError("; ".join(problems))


def _spec(cls: type, data: Any) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} must be an object")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**values)


def _positive_ints(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 65536 for v in values)


def _problems(arch: SDArchitecture) -> list[str]:
    return _channel_problems(arch) or _size_problems(arch)


def _channel_problems(arch: SDArchitecture) -> list[str]:
    problems = []
    for part in ("unet", "vae"):
        channels = getattr(arch, part).block_out_channels
        shaped = isinstance(channels, tuple) and len(channels) == SD1_BLOCKS
        if not shaped or not _positive_ints(*channels):
            problems.append(f"{part}.block_out_channels must be {SD1_BLOCKS} positive integers")
    return problems


def _size_problems(arch: SDArchitecture) -> list[str]:
    u, v, t = arch.unet, arch.vae, arch.text_encoder
    ints = (u.attention_head_dim, u.cross_attention_dim, u.sample_size, u.layers_per_block)
    ints += (u.norm_num_groups, u.in_channels, v.sample_size, v.latent_channels)
    ints += (v.layers_per_block, v.norm_num_groups, t.hidden_size, t.intermediate_size)
    ints += (t.num_hidden_layers, t.num_attention_heads, t.projection_dim)
    ints += (t.max_position_embeddings, t.vocab_size)
    if not _positive_ints(*ints):
        return ["sizes must be positive integers"]
    checks = [
        (u.norm_num_groups, u.block_out_channels, "unet.block_out_channels", "norm_num_groups"),
        (u.attention_head_dim, u.block_out_channels, "unet.block_out_channels", "heads"),
        (v.norm_num_groups, v.block_out_channels, "vae.block_out_channels", "norm_num_groups"),
        (t.num_attention_heads, (t.hidden_size,), "text_encoder.hidden_size", "heads"),
    ]
    problems = [
        f"{what} must divide by {by}" for d, vs, what, by in checks if any(x % d for x in vs)
    ]
    if t.num_hidden_layers > MAX_TEXT_LAYERS:
        problems.append(f"text_encoder.num_hidden_layers must be at most {MAX_TEXT_LAYERS}")
    if max(u.layers_per_block, v.layers_per_block) > MAX_LAYERS_PER_BLOCK:
        problems.append(f"layers_per_block must be at most {MAX_LAYERS_PER_BLOCK}")
    if not isinstance(v.scaling_factor, int | float) or not 0 < v.scaling_factor < 100:
        problems.append("vae.scaling_factor must be a positive number")
    if t.hidden_act not in ("quick_gelu", "gelu"):
        problems.append("text_encoder.hidden_act must be quick_gelu or gelu")
    return problems


SD15 = SDArchitecture(
    name="sd15",
    unet=UNetSpec(
        block_out_channels=(320, 640, 1280, 1280),
        attention_head_dim=8,
        cross_attention_dim=768,
        sample_size=64,
    ),
    vae=VAESpec(block_out_channels=(128, 256, 512, 512), sample_size=512),
    text_encoder=TextEncoderSpec(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        projection_dim=768,
    ),
)

TINY = SDArchitecture(
    name="tiny-sd1",
    unet=UNetSpec(
        block_out_channels=(32, 32, 64, 64),
        attention_head_dim=2,
        cross_attention_dim=32,
        sample_size=8,
    ),
    vae=VAESpec(block_out_channels=(32, 32, 64, 64), sample_size=64),
    text_encoder=TextEncoderSpec(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=32,
    ),
)


def unet_config(arch: SDArchitecture) -> dict[str, Any]:
    u = arch.unet
    return {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": u.attention_head_dim,
        "block_out_channels": list(u.block_out_channels),
        "center_input_sample": False,
        "cross_attention_dim": u.cross_attention_dim,
        "down_block_types": list(DOWN_BLOCK_TYPES),
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": u.in_channels,
        "layers_per_block": u.layers_per_block,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": u.norm_num_groups,
        "out_channels": 4,
        "sample_size": u.sample_size,
        "up_block_types": list(UP_BLOCK_TYPES),
    }


def vae_config(arch: SDArchitecture) -> dict[str, Any]:
    v = arch.vae
    return {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": list(v.block_out_channels),
        "down_block_types": ["DownEncoderBlock2D"] * SD1_BLOCKS,
        "in_channels": 3,
        "latent_channels": v.latent_channels,
        "layers_per_block": v.layers_per_block,
        "norm_num_groups": v.norm_num_groups,
        "out_channels": 3,
        "sample_size": v.sample_size,
        "scaling_factor": v.scaling_factor,
        "up_block_types": ["UpDecoderBlock2D"] * SD1_BLOCKS,
    }


def text_encoder_config(arch: SDArchitecture) -> dict[str, Any]:
    """`CLIPTextConfig` keyword arguments (openai/clip-vit-large-patch14's text tower for SD15)."""
    t = arch.text_encoder
    return {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "hidden_act": t.hidden_act,
        "hidden_size": t.hidden_size,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": t.intermediate_size,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": t.max_position_embeddings,
        "num_attention_heads": t.num_attention_heads,
        "num_hidden_layers": t.num_hidden_layers,
        "projection_dim": t.projection_dim,
        "vocab_size": t.vocab_size,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }


def scheduler_config() -> dict[str, Any]:
    """SD 1.5's own scheduler settings (PNDM, scaled-linear betas)."""
    return {
        "_class_name": SCHEDULER_CLASS,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
    }


def model_index() -> dict[str, Any]:
    return {
        "_class_name": PIPELINE_CLASS,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", SCHEDULER_CLASS],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_config_folder(arch: SDArchitecture, tokenizer_dir: Path, out_dir: Path) -> Path:
    """Write the diffusers-style folder (configs and tokenizer, no weights) for `arch`."""
    arch.check()
    _write_json(out_dir / "model_index.json", model_index())
    _write_json(out_dir / "unet" / "config.json", unet_config(arch))
    _write_json(out_dir / "vae" / "config.json", vae_config(arch))
    _write_json(out_dir / "text_encoder" / "config.json", text_encoder_config(arch))
    _write_json(out_dir / "scheduler" / "scheduler_config.json", scheduler_config())
    _write_json(out_dir / "sdstack_architecture.json", arch.to_dict())
    shutil.copytree(tokenizer_dir, out_dir / "tokenizer", dirs_exist_ok=True)
    return out_dir
