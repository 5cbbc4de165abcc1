"""Generator process: wiring only (`python -m services.generator.server`)."""

from __future__ import annotations

import logging

from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from services.common.config import Settings
from services.common.errors import ConfigError, FailedPrecondition, NotFound
from services.common.gpu_metrics import register_gpu_metrics
from services.common.grpc_server import GrpcServer, run_service
from services.common.malloc_tuning import keep_freed_memory_for_reuse
from services.common.object_store import LORAS_BUCKET, MODELS_BUCKET
from services.common.proto.sdstack.v1 import generator_pb2_grpc
from services.common.sd.devices import check_compile_mode, pick_device, pick_dtype
from services.common.sd.model_registry import ModelRegistry
from services.common.wiring import connect_object_store, start_grpc_service
from services.generator.demo_model import install_demo_model_if_empty
from services.generator.engine import Engine
from services.generator.image_inputs import image_resolver
from services.generator.model_cache import ModelCache, default_cache_bytes
from services.generator.model_validation import validate_model_file
from services.generator.renderer import Renderer
from services.generator.servicer import GeneratorServicer

log = logging.getLogger(__name__)


def quiet_model_libraries() -> None:
    """Progress bars and advice meant for notebooks stay out of the service log."""
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


def build(settings: Settings) -> GrpcServer:
    quiet_model_libraries()
    keep_freed_memory_for_reuse()
    device = pick_device(settings.device)
    dtype = pick_dtype(settings.precision, device)
    check_compile_mode(settings.compile_unet, device)
    tokenizer_dir = settings.resolved_clip_tokenizer_dir
    if not (tokenizer_dir / "vocab.json").exists():
        raise ConfigError(
            "SDSTACK_CLIP_TOKENIZER_DIR",
            f"no CLIP tokenizer in {tokenizer_dir}; run `make install` to set it up",
        )
    store = connect_object_store(settings, [MODELS_BUCKET, LORAS_BUCKET])
    registry = ModelRegistry(store)
    cache = ModelCache(
        store,
        settings.resolved_model_cache_dir,
        tokenizer_dir,
        max_loaded=settings.model_cache_max_loaded,
        max_bytes=settings.model_cache_max_bytes or default_cache_bytes(device),
        device=device,
        dtype=dtype,
        vae_tile_size=settings.vae_tile_size,
        compile_mode=settings.compile_unet,
    )
    renderer = Renderer(registry, cache)
    engine = Engine(
        registry,
        renderer,
        settings.queue_size,
        default_timeout=settings.request_timeout_seconds,
        max_batch_images=settings.max_batch_images,
    )
    servicer = GeneratorServicer(
        engine,
        registry,
        max_pixels=settings.max_pixels,
        default_checkpoint=settings.default_checkpoint,
        validate_model=lambda path, kind, fmt: validate_model_file(
            path, kind, fmt, config_root=cache.cache_dir / "configs", tokenizer_dir=tokenizer_dir
        ),
        resolve_image=image_resolver(store, settings.max_pixels),
    )
    register_gpu_metrics()  # per-GPU memory/utilisation in /metrics; none without a GPU
    server = start_grpc_service(
        settings,
        "generator",
        "sdstack.v1.Generator",
        lambda s: generator_pb2_grpc.add_GeneratorServicer_to_server(servicer, s),
    )
    if settings.install_demo_model:
        install_demo_model_if_empty(registry, tokenizer_dir)
    engine.start()
    server.on_shutdown(engine.stop)
    _warm_default_checkpoint(engine, cache, settings.default_checkpoint)
    server.set_serving(True)
    log.info("generator ready on %s (device %s, %s)", settings.target("generator"), device, dtype)
    return server


def _warm_default_checkpoint(engine: Engine, cache: ModelCache, preferred: str) -> None:
    """Ready only after the default weights load (a replica that answers is useful)."""
    try:
        model = engine.default_checkpoint(preferred)
    except FailedPrecondition:  # an empty store is allowed; generation will say so
        log.warning("no default checkpoint to load yet")
        return
    except NotFound:
        raise ConfigError(
            "SDSTACK_DEFAULT_CHECKPOINT", f"no checkpoint named {preferred!r} in the store"
        ) from None
    cache.pipeline(model)


def main() -> None:
    run_service("generator", build)


if __name__ == "__main__":
    main()
