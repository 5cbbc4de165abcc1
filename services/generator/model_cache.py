"""Checkpoints fetched from the store into a local sha256-addressed cache, and the
pipelines built from them kept loaded in an LRU bounded by memory and by count.

The file cache is keyed by content (`<sha256>.<ext>`), so a renamed or re-uploaded
model is never fetched twice; the loaded-pipeline LRU is keyed the same way. The pipeline
just loaded is always kept, even when it alone is over the memory budget.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from prometheus_client import Counter, Gauge, Histogram

from services.common.object_store import ObjectStore
from services.common.sd.checkpoint_loader import load_pipeline
from services.common.sd.devices import prefers_channels_last
from services.common.sd.model_registry import ModelRegistry, StoredModel
from services.generator import deep_cache
from services.generator.loras import LoraAdapters
from services.generator.vaes import bound_memory

log = logging.getLogger(__name__)

RECOMPILE_LIMIT = 64

MODEL_LOAD_SECONDS = Histogram(
    "sdstack_model_load_seconds",
    "Time to fetch and load a checkpoint.",
    ["model"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
MODEL_CACHE_BYTES = Gauge(
    "sdstack_model_cache_bytes", "Bytes of weights held by the loaded checkpoints."
)
MODEL_CACHE_REQUESTS = Counter(
    "sdstack_model_cache_requests_total",
    "Checkpoint look-ups by where they were found: loaded, file (on local disk), store.",
    ["result"],
)


class ModelCache:
    def __init__(
        self,
        store: ObjectStore,
        cache_dir: Path,
        tokenizer_dir: Path,
        *,
        max_loaded: int,
        max_bytes: int,
        device: torch.device,
        dtype: torch.dtype,
        vae_tile_size: int,
        compile_mode: str = "off",
    ) -> None:
        self.store = store
        self.cache_dir = cache_dir
        self.tokenizer_dir = tokenizer_dir
        self.max_loaded = max_loaded
        self.max_bytes = max_bytes
        self._sizes: dict[str, int] = {}
        self._adapters: dict[str, LoraAdapters] = {}
        self.device = device
        self.dtype = dtype
        self.vae_tile_size = vae_tile_size
        """Pictures with a longer side go through the VAE in tiles (`vaes.bound_memory`)."""
        self.compile_mode = compile_mode
        """`torch.compile` mode of each loaded U-Net; `off` runs it eagerly."""
        self._loaded: OrderedDict[str, StableDiffusionPipeline] = OrderedDict()
        self._lock = threading.Lock()

    def pipeline(self, model: StoredModel) -> StableDiffusionPipeline:
        """The loaded pipeline of `model`, fetching and loading it when needed."""
        with self._lock:
            if model.sha256 in self._loaded:
                MODEL_CACHE_REQUESTS.labels("loaded").inc()
                self._loaded.move_to_end(model.sha256)
                return self._loaded[model.sha256]
            started = time.perf_counter()
            path = self.local_file(model)
            pipe = load_pipeline(
                path,
                config_root=self.cache_dir / "configs",
                tokenizer_dir=self.tokenizer_dir,
                dtype=self.dtype,
            ).to(self.device)
            for component in (pipe.unet, pipe.vae, pipe.text_encoder):
                component.requires_grad_(False)  # inference only; compiled graphs guard on it
            if prefers_channels_last(self.device, self.dtype):
                pipe.unet.to(memory_format=torch.channels_last)
            if self.compile_mode != "off":
                compile_unet(pipe.unet, mode=self.compile_mode)
            bound_memory(pipe.vae, self.vae_tile_size)
            self._loaded[model.sha256] = pipe
            self._sizes[model.sha256] = pipeline_bytes(pipe)
            self._adapters[model.sha256] = LoraAdapters(pipe)
            self._evict()
            elapsed = time.perf_counter() - started
            MODEL_LOAD_SECONDS.labels(model.name).observe(elapsed)
            log.info("loaded checkpoint %s [%s] in %.2fs", model.name, model.short_hash, elapsed)
            return pipe

    def local_file(self, model: StoredModel) -> Path:
        """The model's file (or diffusers folder) on local disk, downloaded and
        sha256-checked if missing."""
        path, fetched = ModelRegistry(self.store).local_copy(model, self.cache_dir / "files")
        MODEL_CACHE_REQUESTS.labels("store" if fetched else "file").inc()
        return path

    def adapters(self, model: StoredModel) -> LoraAdapters:
        """The LoRA adapters living in `model`'s loaded pipeline; they go when it goes."""
        self.pipeline(model)
        with self._lock:
            return self._adapters[model.sha256]

    @property
    def loaded(self) -> list[str]:
        """sha256 of the loaded checkpoints, least recently used first."""
        return list(self._loaded)

    @property
    def loaded_bytes(self) -> int:
        return sum(self._sizes.values())

    def _evict(self) -> None:
        """Drops least recently used pipelines while over the count or the memory budget."""
        while len(self._loaded) > 1 and (
            len(self._loaded) > self.max_loaded or self.loaded_bytes > self.max_bytes
        ):
            evicted, _ = self._loaded.popitem(last=False)
            self._adapters.pop(evicted, None)
            freed = self._sizes.pop(evicted)
            log.info("unloaded checkpoint %s (%d MiB)", evicted[:10], freed >> 20)
        MODEL_CACHE_BYTES.set(self.loaded_bytes)


def compile_unet(unet: UNet2DConditionModel, **options: Any) -> None:
    """Compile `unet` in place (`nn.Module.compile(**options)`), so diffusers and peft keep
    loading LoRAs into the same module.

    The first pass of each picture size compiles; the next size compiles once more with
    dynamic sizes (so do batch sizes). LoRA switches and mixes compile nothing (`lora_rows`);
    each LoRA-column width a pass reads does, once. The U-Net's own recompile limit is
    raised so that these graphs never send it back to eager (dynamo's global setting would not
    do: it is per thread, and every job runs on a thread of its own).

    Compiled graphs do not see forward hooks added later (dynamo does not guard on hooks), so
    DeepCache's feature tap goes on first. LoRA loads change the layers, which dynamo does
    guard on, so their hooks are compiled in with them.
    """
    deep_cache.install_tap(unet)
    unet.compile(recompile_limit=RECOMPILE_LIMIT, **options)


def pipeline_bytes(pipe: StableDiffusionPipeline) -> int:
    """Bytes of the weights and buffers of every module of the pipeline."""
    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            tensors = [*component.parameters(), *component.buffers()]
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def default_cache_bytes(device: torch.device) -> int:
    """Half of the device's memory (the GPU's, or the machine's RAM on CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 2
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
