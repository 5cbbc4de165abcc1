"""The LoRA file the trainer writes: kohya/A1111 keys and `ss_*` metadata.

peft names an adapted layer `<module path>.lora_A.<adapter>.weight`; kohya's format (what
A1111, ComfyUI and diffusers' `load_lora_weights` read) names it
`lora_unet_<module path, dots as underscores>.lora_down.weight`, with `.lora_up.weight`
and a scalar `.alpha` (scale = alpha / rank, as peft's `lora_alpha / r`). Text-encoder
layers are `lora_te_text_model_…` (transformers 5 dropped the `text_model.` prefix from the
module names; files keep it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

# Layers adapted, as kohya's networks/lora.py adapts them in SD 1.x: the attention
# projections and feed-forward of every transformer block, and CLIP's attention and MLP.
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
TEXT_MODEL = "text_model."
ADAPTER = "default"


def _lora_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Module path → peft LoRA layer (those holding `lora_A`)."""
    return {
        name: module
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and ADAPTER in getattr(module, "lora_A", {})
    }


def kohya_state_dict(
    unet: nn.Module, text_encoder: nn.Module | None, alpha: float, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """The peft adapters of `unet` (and `text_encoder`) as kohya tensors."""
    tensors: dict[str, torch.Tensor] = {}
    parts: list[tuple[str, nn.Module]] = [("lora_unet_", unet)]
    if text_encoder is not None:
        parts.append(("lora_te_", text_encoder))
    for prefix, model in parts:
        for name, module in _lora_modules(model).items():
            path = name if prefix == "lora_unet_" else TEXT_MODEL + name.removeprefix(TEXT_MODEL)
            key = prefix + path.replace(".", "_")
            down = module.lora_A[ADAPTER].weight.detach()
            up = module.lora_B[ADAPTER].weight.detach()
            tensors[f"{key}.lora_down.weight"] = down.to("cpu", dtype).contiguous()
            tensors[f"{key}.lora_up.weight"] = up.to("cpu", dtype).contiguous()
            tensors[f"{key}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return tensors


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's trainable tensors by parameter name (for resumable state)."""
    return {
        name: param.detach().cpu().clone()
        for name, param in model.named_parameters()
        if ".lora_" in name
    }


def load_adapter_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [name for name in params if ".lora_" in name and name not in state]
    if missing:
        raise ValueError(f"saved state lacks {len(missing)} adapter tensors, e.g. {missing[0]}")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def write_lora(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """Writes the file atomically (temporary name, fsync, rename); returns its size."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    with tmp.open("rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path.stat().st_size


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def kohya_metadata(
    *,
    output_name: str,
    config: Mapping[str, object],
    steps: int,
    images: int,
    tag_frequency: Mapping[str, Mapping[str, int]],
    dataset_dirs: Mapping[str, Mapping[str, int]],
    base_model: str,
    base_model_hash: str,
    mixed_precision: str,
    started_at: str,
) -> dict[str, str]:
    """kohya's `__metadata__` (all strings), plus `modelspec.*` and sdstack's own config."""
    c = config
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(c["network_dim"]),
        "ss_network_alpha": str(c["network_alpha"]),
        "ss_learning_rate": str(c["learning_rate"]),
        "ss_unet_lr": str(c["unet_lr"]),
        "ss_text_encoder_lr": str(c["text_encoder_lr"]),
        "ss_network_train_unet_only": str(not c["train_text_encoder"]),
        "ss_num_train_images": str(images),
        "ss_num_epochs": str(c["epochs"]),
        "ss_epoch": str(c.get("epoch_done", c["epochs"])),
        "ss_steps": str(steps),
        "ss_max_train_steps": str(c["total_steps"]),
        "ss_batch_size_per_device": str(c["batch_size"]),
        "ss_lr_scheduler": str(c["lr_scheduler"]),
        "ss_lr_warmup_steps": str(c["lr_warmup_steps"]),
        "ss_optimizer": str(c["optimizer"]),
        "ss_resolution": f"({c['resolution']}, {c['resolution']})",
        "ss_enable_bucket": str(c["bucketing"]),
        "ss_mixed_precision": mixed_precision,
        "ss_gradient_checkpointing": str(c["gradient_checkpointing"]),
        "ss_cache_latents": str(c["cache_latents"]),
        "ss_clip_skip": str(c["clip_skip"]),
        "ss_seed": str(c["seed"]),
        "ss_noise_offset": str(c["noise_offset"]),
        "ss_min_snr_gamma": str(c["min_snr_gamma"]),
        "ss_base_model_version": "sd_v1",
        "ss_v2": "False",
        "ss_sd_model_name": base_model,
        "ss_sd_model_hash": base_model_hash[:10],
        "ss_new_sd_model_hash": base_model_hash,
        "ss_tag_frequency": json.dumps(tag_frequency, ensure_ascii=False),
        "ss_dataset_dirs": json.dumps(dataset_dirs, ensure_ascii=False),
        "ss_output_name": output_name,
        "ss_training_started_at": started_at,
        "ss_training_finished_at": iso_now(),
        "ss_training_comment": "trained by sdstack",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": output_name,
        "modelspec.date": iso_now(),
        "modelspec.resolution": f"{c['resolution']}x{c['resolution']}",
        "sdstack.training_config": json.dumps(dict(c), sort_keys=True, default=str),
    }
    return meta
