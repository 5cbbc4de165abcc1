"""The generator engine on the real tiny pipeline: bounded queue, priorities, cancel."""

from __future__ import annotations

import threading
from collections.abc import Iterator

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


@pytest.fixture
def engine(models: GatedModels) -> Iterator[Engine]:
    renderer = Renderer(registry=None, cache=models)  # type: ignore[arg-type]
    engine = Engine(registry=None, renderer=renderer, queue_size=1)  # type: ignore[arg-type]
    engine.start()
    yield engine
    models.gate.set()
    engine.stop()


def _job(
    request_id: str, priority: int = 0, steps: int = 2, seed: int = 1, **options: object
) -> GenerationJob:
    request = generator_pb2.GenerateRequest(
        request_id=request_id,
        priority=priority,
        params=common_pb2.GenerationParams(prompt="x", seed=seed, width=64, height=64, steps=steps),
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


def test_reusing_a_running_request_id_is_refused(engine: Engine, models: GatedModels) -> None:
    engine.submit(_job("same"), MODEL)
    assert models.asked.wait(10)
    with pytest.raises(AlreadyExists, match="already running"):
        engine.submit(_job("same"), MODEL)
    models.gate.set()


def _pixels(image_png: bytes) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(image_png)).convert("RGB")).astype(int)


def test_identical_requests_run_as_one_batch(engine: Engine, models: GatedModels) -> None:
    engine.queue_size = 8
    blocker = engine.submit(_job("blocker", seed=100), MODEL)
    assert models.asked.wait(10)
    followers = [engine.submit(_job(f"same-{i}", seed=10 + i), MODEL) for i in range(3)]
    before = REGISTRY.get_sample_value("sdstack_generator_batched_jobs_total") or 0
    models.gate.set()
    assert isinstance(_outcome(blocker), Finished)
    outcomes = [_outcome(h) for h in followers]
    assert REGISTRY.get_sample_value("sdstack_generator_batched_jobs_total") == before + 3
    for i, outcome in enumerate(outcomes):
        assert isinstance(outcome, Finished)
        assert [(image.seed, image.index) for image in outcome.images] == [(10 + i, 0)]
    alone = _outcome(engine.submit(_job("alone", seed=11), MODEL))
    assert isinstance(alone, Finished)
    difference = np.abs(_pixels(alone.images[0].png) - _pixels(outcomes[1].images[0].png))
    assert difference.max() <= 1


def test_a_job_past_its_deadline_fails_cleanly(engine: Engine, models: GatedModels) -> None:
    engine.queue_size = 2
    engine.submit(_job("blocker"), MODEL)
    assert models.asked.wait(10)
    late = engine.submit(_job("late", timeout=duration_pb2.Duration(nanos=1_000_000)), MODEL)
    models.gate.set()
    outcome = _outcome(late)
    assert isinstance(outcome, Failed)
    assert isinstance(outcome.error, DeadlineExceeded)
