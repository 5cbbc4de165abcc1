"""Checkpoints fetched from the store into a local sha256-addressed cache, and the
pipelines built from them kept loaded in a small LRU.

The file cache is keyed by content (`<sha256>.<ext>`), so a renamed or re-uploaded
model is never fetched twice; the loaded-pipeline LRU is keyed the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from prometheus_client import Counter, Histogram

from services.common.object_store import ObjectStore
from services.generator.checkpoint_loader import load_pipeline
from services.generator.model_registry import StoredModel

log = logging.getLogger(__name__)

MODEL_LOAD_SECONDS = Histogram(
    "sdstack_model_load_seconds",
    "Time to fetch and load a checkpoint.",
    ["model"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
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
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.store = store
        self.cache_dir = cache_dir
        self.tokenizer_dir = tokenizer_dir
        self.max_loaded = max_loaded
        self.device = device
        self.dtype = dtype
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
            self._loaded[model.sha256] = pipe
            while len(self._loaded) > self.max_loaded:
                evicted, _ = self._loaded.popitem(last=False)
                log.info("unloaded checkpoint %s", evicted[:10])
            elapsed = time.perf_counter() - started
            MODEL_LOAD_SECONDS.labels(model.name).observe(elapsed)
            log.info("loaded checkpoint %s [%s] in %.2fs", model.name, model.short_hash, elapsed)
            return pipe

    def local_file(self, model: StoredModel) -> Path:
        """The model's file on local disk, downloaded (and sha256-checked) if missing."""
        path = self.cache_dir / "files" / f"{model.sha256 or model.name}.{model.format}"
        if path.exists():
            MODEL_CACHE_REQUESTS.labels("file").inc()
            return path
        MODEL_CACHE_REQUESTS.labels("store").inc()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.store.download(model.bucket, model.key, path)
        return path
