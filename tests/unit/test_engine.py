"""The generator engine on the real tiny pipeline: bounded queue, priorities, cancel, and
step-level continuous batching of the jobs running together."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from google.protobuf import duration_pb2
from PIL import Image
from prometheus_client import REGISTRY

from services.common.errors import AlreadyExists, Cancelled, DeadlineExceeded, Overloaded
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2
from services.common.sd.model_registry import StoredModel
from services.generator.engine import Engine, Failed, Finished, JobHandle, Progress, Queued
from services.generator.jobs import GenerationJob, job_from_request
from services.generator.loras import LoraAdapters
from services.generator.renderer import Renderer

MODEL = StoredModel(
    name="tiny",
    kind=common_pb2.MODEL_KIND_CHECKPOINT,
    bucket="models",
    key="checkpoints/tiny.safetensors",
    sha256="ab" * 32,
    size_bytes=1,
    format="safetensors",
    created_at=None,
)


class GatedModels:
    """Hands out the tiny pipeline once `gate` opens, so a test decides when work starts."""

    device = torch.device("cpu")
    vae_tile_size = 0  # ModelCache's setting: these small pictures never reach a tile

    def __init__(self, pipe: StableDiffusionPipeline) -> None:
        self.pipe = pipe
        self.gate = threading.Event()
        self.asked = threading.Event()
        self._adapters = LoraAdapters(pipe)

    def pipeline(self, _model: StoredModel) -> StableDiffusionPipeline:
        self.asked.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return self.pipe

    def adapters(self, model: StoredModel) -> LoraAdapters:
        self.pipeline(model)
        return self._adapters


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model_files) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model_files.diffusers_dir, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def models(tiny_pipe: StableDiffusionPipeline) -> GatedModels:
    return GatedModels(tiny_pipe)


def _started(models: GatedModels, queue_size: int, max_batch_images: int) -> Engine:
    renderer = Renderer(registry=None, cache=models)  # type: ignore[arg-type]
    engine = Engine(
        registry=None,  # type: ignore[arg-type]
        renderer=renderer,
        queue_size=queue_size,
        max_batch_images=max_batch_images,
    )
    engine.start()
    return engine


@pytest.fixture
def engine(models: GatedModels) -> Iterator[Engine]:
    """One job at a time: the queue's own behaviour."""
    engine = _started(models, queue_size=1, max_batch_images=1)
    yield engine
    models.gate.set()
    engine.stop()


@pytest.fixture
def batching_engine(models: GatedModels) -> Iterator[Engine]:
    """Up to 8 images running together, sharing U-Net passes."""
    engine = _started(models, queue_size=8, max_batch_images=8)
    yield engine
    models.gate.set()
    engine.stop()


def _job(
    request_id: str,
    priority: int = 0,
    steps: int = 2,
    seed: int = 1,
    params: dict | None = None,
    **options: object,
) -> GenerationJob:
    settings = {"prompt": "x", "seed": seed, "width": 64, "height": 64, "steps": steps}
    request = generator_pb2.GenerateRequest(
        request_id=request_id,
        priority=priority,
        params=common_pb2.GenerationParams(**(settings | (params or {}))),
        **options,
    )
    return job_from_request(request, 1 << 20)


def _outcome(handle: JobHandle) -> Finished | Failed:
    events = list(handle.stream())
    assert isinstance(events[0], Queued)
    return events[-1]  # type: ignore[return-value]


def test_a_full_queue_answers_overloaded_with_a_retry_hint(
    engine: Engine, models: GatedModels
) -> None:
    running = engine.submit(_job("running"), MODEL)
    assert models.asked.wait(10)
    waiting = engine.submit(_job("waiting"), MODEL)
    with pytest.raises(Overloaded) as raised:
        engine.submit(_job("refused"), MODEL)
    assert raised.value.retry_after_seconds >= 1
    models.gate.set()
    assert isinstance(_outcome(running), Finished)
    assert isinstance(_outcome(waiting), Finished)


def test_cancel_stops_a_running_job_and_the_next_one_runs(
    engine: Engine, models: GatedModels
) -> None:
    running = engine.submit(_job("long", steps=50), MODEL)
    assert models.asked.wait(10)
    following = engine.submit(_job("next"), MODEL)
    assert engine.cancel("long")
    models.gate.set()
    outcome = _outcome(running)
    assert isinstance(outcome, Failed)
    assert isinstance(outcome.error, Cancelled)
    finished = _outcome(following)
    assert isinstance(finished, Finished)
    assert [image.seed for image in finished.images] == [1]
    assert not engine.cancel("long"), "a finished job cannot be cancelled again"


def test_higher_priority_runs_first(engine: Engine, models: GatedModels) -> None:
    engine.queue_size = 3
    blocker = engine.submit(_job("blocker"), MODEL)
    assert models.asked.wait(10)
    # different step counts, so the two are not batched together
    low = engine.submit(_job("low", priority=-5, steps=3), MODEL)
    high = engine.submit(_job("high", priority=5, steps=4), MODEL)
    order: list[str] = []

    def follow(handle: JobHandle) -> None:
        for event in handle.stream():
            if isinstance(event, Progress) and event.step == 1:
                order.append(handle.job.request_id)

    threads = [threading.Thread(target=follow, args=(h,)) for h in (blocker, low, high)]
    for thread in threads:
        thread.start()
    models.gate.set()
    for thread in threads:
        thread.join(60)
    assert order == ["blocker", "high", "low"]


def test_progress_counts_every_step(engine: Engine, models: GatedModels) -> None:
    models.gate.set()
    handle = engine.submit(_job("steps", steps=3), MODEL)
    events = list(handle.stream())
    steps = [(e.step, e.total_steps) for e in events if isinstance(e, Progress)]
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert isinstance(events[-1], Finished)


@pytest.mark.parametrize("upscaler", ["Lanczos", "Nearest"])
def test_a_pixel_upscale_loads_no_checkpoint(
    engine: Engine, models: GatedModels, upscaler: str
) -> None:
    """An upscale without tiled refine samples nothing, so the checkpoint's pipeline (4 GB for
    SD 1.5) is neither fetched nor loaded for it."""
    models.gate.set()
    source = Image.fromarray(np.arange(24 * 32 * 3, dtype=np.uint8).reshape(24, 32, 3))
    request = generator_pb2.GenerateRequest(
        request_id="upscale",
        mode=generator_pb2.GENERATION_MODE_UPSCALE,
        upscale={"image": {"data": b"decoded by the resolver"}, "upscaler": upscaler, "scale": 2},
    )
    job = job_from_request(request, 1 << 20, lambda _ref, _slot: source)
    outcome = _outcome(engine.submit(job, MODEL))
    assert isinstance(outcome, Finished)
    assert not models.asked.is_set(), "the checkpoint's pipeline was asked for"
    resample = getattr(Image.Resampling, upscaler.upper())
    assert np.array_equal(
        _pixels(outcome.images[0].png), np.asarray(source.resize((64, 48), resample)).astype(int)
    )


def test_reusing_a_running_request_id_is_refused(engine: Engine, models: GatedModels) -> None:
    engine.submit(_job("same"), MODEL)
    assert models.asked.wait(10)
    with pytest.raises(AlreadyExists, match="already running"):
        engine.submit(_job("same"), MODEL)
    models.gate.set()


def _pixels(image_png: bytes) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(image_png)).convert("RGB")).astype(int)


MIXED = [
    {"prompt": "a red fox", "steps": 3, "sampler": "Euler a", "cfg_scale": 7},
    {"prompt": "a lighthouse at dusk", "steps": 5, "sampler": "DPM++ 2M", "cfg_scale": 1},
    {"prompt": "(a cat:1.4)", "steps": 4, "sampler": "Euler", "cfg_scale": 4, "seed": 9},
    {"prompt": "a boat AND a storm", "steps": 6, "sampler": "DDIM", "width": 96},
]
"""Jobs that differ in everything but their checkpoint: prompts, steps, samplers, CFG (1 runs
no negative pass), seeds, sizes and AND composition."""


def _batched_jobs() -> float:
    return REGISTRY.get_sample_value("sdstack_generator_batched_jobs_total") or 0


def test_concurrent_jobs_share_unet_passes_and_make_the_images_they_make_alone(
    batching_engine: Engine, models: GatedModels
) -> None:
    before = _batched_jobs()
    handles = [
        batching_engine.submit(_job(f"mixed-{i}", params=p), MODEL) for i, p in enumerate(MIXED)
    ]
    models.gate.set()
    together = [_outcome(h) for h in handles]
    assert all(isinstance(outcome, Finished) for outcome in together)
    assert _batched_jobs() >= before + 3, "the jobs ran one after another"
    for i, params in enumerate(MIXED):
        alone = _outcome(batching_engine.submit(_job(f"alone-{i}", params=params), MODEL))
        assert isinstance(alone, Finished)
        shared = together[i].images[0]  # type: ignore[union-attr]
        assert shared.infotext == alone.images[0].infotext
        difference = np.abs(_pixels(alone.images[0].png) - _pixels(shared.png))
        assert difference.max() <= 2, f"job {i} differs from its image alone"


def test_a_job_joins_a_running_one_between_steps_and_leaves_before_it(
    batching_engine: Engine, models: GatedModels
) -> None:
    models.gate.set()
    long = batching_engine.submit(_job("long", steps=40), MODEL)
    finished: list[str] = []
    events = long.stream()
    next(e for e in events if isinstance(e, Progress) and e.step >= 2)
    short = batching_engine.submit(_job("short", steps=3, seed=7), MODEL)
    before = _batched_jobs()
    assert isinstance(_outcome(short), Finished)
    finished.append("short")
    steps_left = [e.step for e in events if isinstance(e, Progress)]
    finished.append("long")
    assert steps_left and steps_left[-1] == 40, "the long job went on to its last step"
    assert steps_left[0] < 40 - 3, "the short job waited for the long one to end"
    assert _batched_jobs() >= before + 1, "the short job ran no step with the long one"
    assert finished == ["short", "long"]


def test_a_job_on_another_checkpoint_waits_and_nothing_overtakes_it(
    batching_engine: Engine, models: GatedModels
) -> None:
    other_model = replace(MODEL, name="other", sha256="cd" * 32)
    started: list[str] = []

    def follow(handle: JobHandle) -> None:
        for event in handle.stream():
            if isinstance(event, Progress) and event.step == 1:
                started.append(handle.job.request_id)

    first = batching_engine.submit(_job("first", steps=6), MODEL)
    other = batching_engine.submit(_job("other", steps=2), other_model)
    same = batching_engine.submit(_job("same-as-first", steps=2), MODEL)
    threads = [threading.Thread(target=follow, args=(h,)) for h in (first, other, same)]
    for thread in threads:
        thread.start()
    models.gate.set()
    for thread in threads:
        thread.join(60)
    assert started == ["first", "other", "same-as-first"]


def test_a_job_past_its_deadline_fails_cleanly(engine: Engine, models: GatedModels) -> None:
    engine.queue_size = 2
    engine.submit(_job("blocker"), MODEL)
    assert models.asked.wait(10)
    late = engine.submit(_job("late", timeout=duration_pb2.Duration(nanos=1_000_000)), MODEL)
    models.gate.set()
    outcome = _outcome(late)
    assert isinstance(outcome, Failed)
    assert isinstance(outcome.error, DeadlineExceeded)


def test_finished_jobs_stay_watchable_without_holding_a_thread_each(
    engine: Engine, models: GatedModels
) -> None:
    models.gate.set()
    threads = threading.active_count()
    for i in range(5):
        assert isinstance(_outcome(engine.submit(_job(f"kept-{i}"), MODEL)), Finished)
    assert all(engine.find(f"kept-{i}") is not None for i in range(5))
    assert threading.active_count() <= threads + 1


def test_finished_jobs_are_forgotten_after_a_while(
    engine: Engine, models: GatedModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("services.generator.engine.KEEP_FINISHED_SECONDS", 0.0)
    models.gate.set()
    for i in range(5):
        assert isinstance(_outcome(engine.submit(_job(f"brief-{i}"), MODEL)), Finished)
    assert engine.find("brief-0") is None and engine.find("brief-1") is None
