"""Checkpoints from the store: a sha256-addressed file cache and a memory-bounded LRU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.common.object_store import MODELS_BUCKET, ObjectStore
from services.common.proto.sdstack.v1 import common_pb2
from services.common.sd.model_registry import ModelRegistry
from services.generator.loras import LoraRequest, make_kohya_lora
from services.generator.model_cache import ModelCache, pipeline_bytes
from services.generator.tiny_model import save_tiny_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry(
    object_store: ObjectStore,
    tmp_path_factory: pytest.TempPathFactory,
    clip_tokenizer_dir: Path,
) -> ModelRegistry:
    object_store.ensure_buckets([MODELS_BUCKET, "loras"])
    registry = ModelRegistry(object_store)
    for name, seed in (("cache-a", 0), ("cache-b", 1), ("cache-c", 2)):
        files = save_tiny_model(tmp_path_factory.mktemp(name), clip_tokenizer_dir, seed=seed)
        registry.import_file(
            files.single_file,
            name=name,
            kind=common_pb2.MODEL_KIND_CHECKPOINT,
            file_format="safetensors",
            overwrite=True,
        )
    return registry


def _cache(
    registry: ModelRegistry,
    folder: Path,
    tokenizer: Path,
    *,
    max_loaded: int,
    max_bytes: int,
    dtype: torch.dtype = torch.float32,
    vae_tile_size: int = 0,
    compile_mode: str = "off",
) -> ModelCache:
    return ModelCache(
        registry.store,
        folder,
        tokenizer,
        max_loaded=max_loaded,
        max_bytes=max_bytes,
        device=torch.device("cpu"),
        dtype=dtype,
        vae_tile_size=vae_tile_size,
        compile_mode=compile_mode,
    )


def _checkpoint(registry: ModelRegistry, name: str):
    return registry.find(common_pb2.MODEL_KIND_CHECKPOINT, name)


def test_files_are_cached_by_content(
    registry: ModelRegistry, tmp_path: Path, clip_tokenizer_dir: Path
) -> None:
    cache = _cache(registry, tmp_path, clip_tokenizer_dir, max_loaded=2, max_bytes=1 << 40)
    model = _checkpoint(registry, "cache-a")
    path = cache.local_file(model)
    assert path.name == f"{model.sha256}.safetensors"
    assert cache.local_file(model) == path
    assert cache.pipeline(model) is cache.pipeline(model), "a loaded pipeline was reloaded"


@pytest.mark.parametrize(
    ("dtype", "channels_last"), [(torch.bfloat16, True), (torch.float32, False)]
)
def test_loaded_pipelines_are_set_up_for_speed_and_memory(
    registry: ModelRegistry,
    tmp_path: Path,
    clip_tokenizer_dir: Path,
    dtype: torch.dtype,
    channels_last: bool,
) -> None:
    """On a CPU a bfloat16 U-Net runs channels-last (faster there; slower in float32), and
    the VAE tiles pictures over the tile size and decodes a batch one picture at a time."""
    cache = _cache(
        registry,
        tmp_path,
        clip_tokenizer_dir,
        max_loaded=1,
        max_bytes=1 << 40,
        dtype=dtype,
        vae_tile_size=512,
    )
    pipe = cache.pipeline(_checkpoint(registry, "cache-a"))
    weight = pipe.unet.conv_in.weight
    assert weight.dtype == dtype
    assert weight.is_contiguous(memory_format=torch.channels_last) is channels_last
    assert pipe.vae.use_tiling and pipe.vae.use_slicing
    assert pipe.vae.tile_sample_min_size == 512 and pipe.vae.tile_latent_min_size == 64


def test_a_compiled_unet_draws_what_the_eager_one_draws_as_loras_switch(
    registry: ModelRegistry, tmp_path: Path, clip_tokenizer_dir: Path
) -> None:
    """`SDSTACK_COMPILE_UNET=default`: each loaded U-Net is compiled by inductor, and its
    pictures, with one LoRA and then another switched in, are the eager U-Net's within a level
    of 255 (inductor fuses and reorders float32 sums: 0.02 levels measured)."""
    model = _checkpoint(registry, "cache-a")
    eager, compiled = (
        _cache(
            registry,
            tmp_path / mode,
            clip_tokenizer_dir,
            max_loaded=1,
            max_bytes=1 << 40,
            compile_mode=mode,
        )
        for mode in ("off", "default")
    )
    assert compiled.pipeline(model).unet._compiled_call_impl is not None
    assert eager.pipeline(model).unet._compiled_call_impl is None
    loras = [
        make_kohya_lora(eager.pipeline(model), tmp_path / f"{seed}.safetensors", seed=seed)
        for seed in (1, 2)
    ]
    pictures = {}
    for path in loras:
        for name, cache in (("eager", eager), ("compiled", compiled)):
            cache.adapters(model).apply([LoraRequest(path.stem, path)])
            generator = torch.Generator().manual_seed(3)
            out = cache.pipeline(model)(
                "a pavilion",
                num_inference_steps=2,
                height=64,
                width=64,
                generator=generator,
                output_type="np",
            )
            pictures[path.stem, name] = out.images * 255
        assert abs(pictures[path.stem, "compiled"] - pictures[path.stem, "eager"]).max() <= 1
    first, second = (pictures[path.stem, "compiled"] for path in loras)
    assert abs(first - second).mean() > 2, "the switched LoRA changed nothing"


def test_memory_budget_evicts_least_recently_used(
    registry: ModelRegistry, tmp_path: Path, clip_tokenizer_dir: Path
) -> None:
    probe = _cache(registry, tmp_path / "probe", clip_tokenizer_dir, max_loaded=1, max_bytes=1)
    one = pipeline_bytes(probe.pipeline(_checkpoint(registry, "cache-a")))
    cache = _cache(
        registry, tmp_path / "cache", clip_tokenizer_dir, max_loaded=8, max_bytes=int(one * 2.5)
    )
    a = cache.pipeline(_checkpoint(registry, "cache-a"))
    cache.pipeline(_checkpoint(registry, "cache-b"))
    assert cache.pipeline(_checkpoint(registry, "cache-a")) is a  # a is now most recent
    cache.pipeline(_checkpoint(registry, "cache-c"))  # over budget: b goes, a stays
    assert cache.loaded_bytes <= one * 2.5
    assert cache.pipeline(_checkpoint(registry, "cache-a")) is a
    assert cache.loaded == [_checkpoint(registry, n).sha256 for n in ("cache-c", "cache-a")]


def test_one_pipeline_over_budget_is_still_kept(
    registry: ModelRegistry, tmp_path: Path, clip_tokenizer_dir: Path
) -> None:
    cache = _cache(registry, tmp_path, clip_tokenizer_dir, max_loaded=8, max_bytes=1)
    pipe = cache.pipeline(_checkpoint(registry, "cache-a"))
    assert cache.pipeline(_checkpoint(registry, "cache-a")) is pipe


def test_a_name_stored_in_two_formats_finds_its_safetensors_file(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    """A `.ckpt` put beside a `.safetensors` of the same name (a manual copy into the bucket)
    does not shadow it: generation uses the safe format."""
    model = _checkpoint(registry, "cache-a")
    pickle = tmp_path / "cache-a.ckpt"
    torch.save({"state_dict": {}}, pickle)
    registry.store.put_file(MODELS_BUCKET, model.key.replace(".safetensors", ".ckpt"), pickle)
    try:
        assert _checkpoint(registry, "cache-a") == model
    finally:
        registry.store.delete(MODELS_BUCKET, model.key.replace(".safetensors", ".ckpt"))


def test_overwriting_a_model_in_another_format_replaces_it(
    registry: ModelRegistry, tmp_path: Path, clip_tokenizer_dir: Path
) -> None:
    """One name, one model: an overwrite as `.ckpt` takes effect, and so does the way back."""
    files = save_tiny_model(tmp_path / "model", clip_tokenizer_dir, seed=5)
    pickle = tmp_path / "replacement.ckpt"
    torch.save({"state_dict": {}}, pickle)
    kind = common_pb2.MODEL_KIND_CHECKPOINT
    first = registry.import_file(
        files.single_file, name="cache-swap", kind=kind, file_format="safetensors"
    )
    swapped = registry.import_file(
        pickle, name="cache-swap", kind=kind, file_format="ckpt", overwrite=True
    )
    assert _checkpoint(registry, "cache-swap") == swapped
    assert not registry.store.exists(MODELS_BUCKET, first.key)
    back = registry.import_file(
        files.single_file, name="cache-swap", kind=kind, file_format="safetensors", overwrite=True
    )
    assert _checkpoint(registry, "cache-swap") == back
    assert not registry.store.exists(MODELS_BUCKET, swapped.key)
    assert registry.delete(kind, "cache-swap")
    assert not registry.delete(kind, "cache-swap")  # nothing of it left
