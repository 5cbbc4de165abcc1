"""The generator's core: a bounded priority queue, one worker per device, and the jobs'
event streams. Transport-agnostic: the servicer translates its events to protobuf.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram

from services.common.errors import (
    AlreadyExists,
    Cancelled,
    FailedPrecondition,
    Overloaded,
    SdstackError,
)
from services.common.proto.sdstack.v1 import common_pb2
from services.common.request_context import reset_request_id, set_request_id
from services.generator.jobs import Txt2ImgJob
from services.generator.model_cache import ModelCache
from services.generator.model_registry import ModelRegistry, StoredModel
from services.generator.txt2img import ModelIdentity, RenderedImage, run_txt2img

log = logging.getLogger(__name__)

QUEUE_DEPTH = Gauge("sdstack_generator_queue_depth", "Jobs waiting to run.")
JOBS_RUNNING = Gauge("sdstack_generator_jobs_running", "Jobs running now.")
IMAGES_GENERATED = Counter("sdstack_images_generated_total", "Images made.", ["model"])
SECONDS_PER_STEP = Histogram(
    "sdstack_seconds_per_step",
    "Wall time of one denoising step.",
    ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
JOBS_FINISHED = Counter("sdstack_generator_jobs_total", "Jobs ended, by outcome.", ["outcome"])


@dataclass(frozen=True)
class Queued:
    position: int
    depth: int


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    job_no: int
    job_count: int
    eta_seconds: float


@dataclass(frozen=True)
class Finished:
    images: list[RenderedImage]
    elapsed_seconds: float
    model: StoredModel


@dataclass(frozen=True)
class Failed:
    error: SdstackError


Event = Queued | Progress | Finished | Failed


@dataclass
class JobHandle:
    """One job and the history of its events; every watcher sees them all, in order."""

    job: Txt2ImgJob
    model: StoredModel
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    _events: list[Event] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def publish(self, event: Event) -> None:
        with self._changed:
            self._events.append(event)
            self._changed.notify_all()

    def stream(self) -> Iterator[Event]:
        """The job's events from the first, until it finishes or fails."""
        seen = 0
        while True:
            with self._changed:
                while len(self._events) <= seen:
                    self._changed.wait()
                fresh = self._events[seen:]
            seen += len(fresh)
            for event in fresh:
                yield event
                if isinstance(event, Finished | Failed):
                    return


class Engine:
    def __init__(self, registry: ModelRegistry, cache: ModelCache, queue_size: int) -> None:
        self.registry = registry
        self.cache = cache
        self.queue_size = queue_size
        self._queue: queue.PriorityQueue[tuple[int, int, JobHandle | None]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._jobs: dict[str, JobHandle] = {}
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name="generator-worker", daemon=True)
        self._recent_step_seconds = 1.0

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Cancels the jobs left (after the server drained), then ends the worker."""
        with self._lock:
            for handle in self._jobs.values():
                if not handle.done.is_set():
                    handle.cancelled.set()
        self._queue.put((10**9, next(self._order), None))
        if self._worker.is_alive():
            self._worker.join(timeout)

    def default_checkpoint(self, preferred: str) -> StoredModel:
        if preferred:
            return self.registry.find(common_pb2.MODEL_KIND_CHECKPOINT, preferred)
        models = self.registry.list([common_pb2.MODEL_KIND_CHECKPOINT])
        if not models:
            raise FailedPrecondition("no checkpoint in the store; import one first")
        return models[0]

    def submit(self, job: Txt2ImgJob, model: StoredModel) -> JobHandle:
        """Queues a job; a full queue raises `Overloaded` with a retry hint."""
        handle = JobHandle(job, model)
        with self._lock:
            if job.request_id in self._jobs and not self._jobs[job.request_id].done.is_set():
                raise AlreadyExists(f"request_id: a job {job.request_id} is already running")
            waiting = self._queue.qsize()
            if waiting >= self.queue_size:
                retry = max(1.0, waiting * job.steps * self._recent_step_seconds / 2)
                raise Overloaded(f"the generator queue is full ({waiting} waiting)", retry)
            self._jobs[job.request_id] = handle
            self._queue.put((-job.priority, next(self._order), handle))
            QUEUE_DEPTH.set(self._queue.qsize())
        handle.publish(Queued(position=waiting, depth=waiting + 1))
        return handle

    def find(self, request_id: str) -> JobHandle | None:
        with self._lock:
            return self._jobs.get(request_id)

    def cancel(self, request_id: str) -> bool:
        handle = self.find(request_id)
        if handle is None or handle.done.is_set():
            return False
        handle.cancelled.set()
        return True

    def _work(self) -> None:
        while True:
            _, _, handle = self._queue.get()
            QUEUE_DEPTH.set(self._queue.qsize())
            if handle is None:
                return
            token = set_request_id(handle.job.request_id)
            try:
                self._run(handle)
            finally:
                reset_request_id(token)
                handle.done.set()
                self._forget_later(handle)

    def _run(self, handle: JobHandle) -> None:
        if handle.cancelled.is_set():
            JOBS_FINISHED.labels("cancelled").inc()
            handle.publish(Failed(Cancelled("cancelled before it started")))
            return
        JOBS_RUNNING.inc()
        started = time.perf_counter()
        try:
            images = self._generate(handle)
        except SdstackError as error:
            JOBS_FINISHED.labels(error.reason.lower()).inc()
            handle.publish(Failed(error))
        except Exception:
            log.exception("generation failed")
            JOBS_FINISHED.labels("internal").inc()
            handle.publish(Failed(SdstackError("generation failed; see the generator log")))
        else:
            JOBS_FINISHED.labels("ok").inc()
            IMAGES_GENERATED.labels(handle.model.name).inc(len(images))
            elapsed = time.perf_counter() - started
            log.info("made %d images in %.2fs", len(images), elapsed)
            handle.publish(Finished(images, elapsed, handle.model))
        finally:
            JOBS_RUNNING.dec()

    def _generate(self, handle: JobHandle) -> list[RenderedImage]:
        job, model = handle.job, handle.model
        pipe = self.cache.pipeline(model)
        last = time.perf_counter()
        total = job.steps * job.n_iter

        def on_step(step: int, steps: int, batch_no: int) -> None:
            nonlocal last
            now = time.perf_counter()
            SECONDS_PER_STEP.labels(model.name).observe(now - last)
            self._recent_step_seconds = now - last
            last = now
            done = (batch_no - 1) * steps + step
            eta = (total - done) * self._recent_step_seconds
            handle.publish(Progress(step, steps, batch_no, job.n_iter, eta))
            if handle.cancelled.is_set():
                raise Cancelled(f"job {job.request_id} was cancelled")

        return run_txt2img(pipe, job, ModelIdentity(model.name, model.sha256), on_step)

    def _forget_later(self, handle: JobHandle, keep_seconds: float = 300.0) -> None:
        """Finished jobs stay watchable for a while, then are dropped."""

        def forget() -> None:
            with self._lock:
                if self._jobs.get(handle.job.request_id) is handle:
                    del self._jobs[handle.job.request_id]

        timer = threading.Timer(keep_seconds, forget)
        timer.daemon = True
        timer.start()
