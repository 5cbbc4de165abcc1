"""The generator's core: a bounded priority queue, one worker per device, the jobs' event
streams, batching of identical requests, deadlines and cancellation.

Transport-agnostic: the servicer translates its events to protobuf.
"""

from __future__ import annotations

import heapq
import io
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from PIL import Image
from prometheus_client import Counter, Gauge, Histogram

from services.common.errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Overloaded,
    SdstackError,
)
from services.common.proto.sdstack.v1 import common_pb2
from services.common.request_context import reset_request_id, set_request_id
from services.common.sd.model_registry import ModelRegistry, StoredModel
from services.generator.jobs import GenerationJob, Mode, Params
from services.generator.renderer import RenderedImage, Renderer

log = logging.getLogger(__name__)

MAX_BATCH_IMAGES = 8
KEEP_FINISHED_SECONDS = 300.0

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
BATCHED_JOBS = Counter(
    "sdstack_generator_batched_jobs_total", "Jobs that ran batched with identical ones."
)


@dataclass(frozen=True)
class Queued:
    position: int
    depth: int


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    eta_seconds: float
    preview_jpeg: bytes = b""


@dataclass(frozen=True)
class Finished:
    images: list[RenderedImage]
    elapsed_seconds: float
    model: StoredModel
    params: Params


@dataclass(frozen=True)
class Failed:
    error: SdstackError


Event = Queued | Progress | Finished | Failed


@dataclass
class JobHandle:
    """One job and the history of its events; every watcher sees them all, in order."""

    job: GenerationJob
    model: StoredModel
    deadline: float
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    _events: list[Event] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def publish(self, event: Event) -> None:
        with self._changed:
            self._events.append(event)
            self._changed.notify_all()
        if isinstance(event, Finished | Failed):
            self.done.set()

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

    def stop_reason(self) -> SdstackError | None:
        """Why this job must stop now, if it must."""
        if self.cancelled.is_set():
            return Cancelled(f"job {self.job.request_id} was cancelled")
        if time.monotonic() > self.deadline:
            return DeadlineExceeded(f"job {self.job.request_id} ran past its deadline")
        return None


def batch_key(handle: JobHandle) -> tuple | None:
    """Jobs with equal keys make the same pictures but for their seeds: run them as one batch."""
    job, p = handle.job, handle.job.params
    if job.mode is not Mode.TXT2IMG or job.hires or p.n_iter != 1 or job.preview_every:
        return None
    if p.subseed_strength:
        return None
    return (
        handle.model.sha256,
        p.prompt,
        p.negative_prompt,
        p.loras,
        p.vae,
        p.sampler,
        p.schedule_type,
        p.steps,
        p.cfg_scale,
        p.width,
        p.height,
        p.clip_skip,
        p.eta,
    )


class Engine:
    def __init__(
        self,
        registry: ModelRegistry,
        renderer: Renderer,
        queue_size: int,
        *,
        default_timeout: float = 600.0,
    ) -> None:
        self.registry = registry
        self.renderer = renderer
        self.queue_size = queue_size
        self.default_timeout = default_timeout
        self._waiting: list[tuple[int, int, JobHandle]] = []
        self._order = itertools.count()
        self._jobs: dict[str, JobHandle] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._worker = threading.Thread(target=self._work, name="generator-worker", daemon=True)
        self._step_seconds = 1.0

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Cancels the jobs left (after the server drained), then ends the worker."""
        with self._wake:
            self._stopping = True
            for handle in self._jobs.values():
                handle.cancelled.set()
            self._wake.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout)

    def default_checkpoint(self, preferred: str) -> StoredModel:
        if preferred:
            return self.registry.find(common_pb2.MODEL_KIND_CHECKPOINT, preferred)
        models = self.registry.list([common_pb2.MODEL_KIND_CHECKPOINT])
        if not models:
            raise FailedPrecondition("no checkpoint in the store; import one first")
        return models[0]

    def submit(self, job: GenerationJob, model: StoredModel) -> JobHandle:
        """Queues a job; a full queue raises `Overloaded` with a retry hint."""
        timeout = job.timeout_seconds or self.default_timeout
        handle = JobHandle(job, model, deadline=time.monotonic() + timeout)
        with self._wake:
            running = self._jobs.get(job.request_id)
            if running is not None and not running.done.is_set():
                raise AlreadyExists(f"request_id: a job {job.request_id} is already running")
            waiting = len(self._waiting)
            if waiting >= self.queue_size:
                retry = max(1.0, waiting * job.params.steps * self._step_seconds / 2)
                raise Overloaded(f"the generator queue is full ({waiting} waiting)", retry)
            self._jobs[job.request_id] = handle
            heapq.heappush(self._waiting, (-job.priority, next(self._order), handle))
            QUEUE_DEPTH.set(len(self._waiting))
            self._wake.notify()
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

    def _next_batch(self) -> list[JobHandle] | None:
        """The next job and the identical ones waiting behind it (None when stopping)."""
        with self._wake:
            while not self._waiting and not self._stopping:
                self._wake.wait()
            if self._stopping:
                for _, _, handle in self._waiting:
                    handle.publish(Failed(Cancelled("the generator is shutting down")))
                self._waiting.clear()
                return None
            _, _, first = heapq.heappop(self._waiting)
            batch = [first]
            key = batch_key(first)
            if key is not None:
                batch += self._take_matching(key, MAX_BATCH_IMAGES - first.job.params.batch_size)
            QUEUE_DEPTH.set(len(self._waiting))
            return batch

    def _take_matching(self, key: tuple, room: int) -> list[JobHandle]:
        taken, kept = [], []
        for entry in sorted(self._waiting):
            handle = entry[2]
            size = handle.job.params.batch_size
            if size <= room and batch_key(handle) == key:
                taken.append(handle)
                room -= size
            else:
                kept.append(entry)
        if taken:
            self._waiting[:] = kept
            heapq.heapify(self._waiting)
        return taken

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            token = set_request_id(batch[0].job.request_id)
            try:
                self._run(batch)
            finally:
                reset_request_id(token)
                for handle in batch:
                    self._forget_later(handle)

    def _run(self, batch: list[JobHandle]) -> None:
        live = [h for h in batch if not self._stopped_early(h)]
        if not live:
            return
        if len(live) > 1:
            BATCHED_JOBS.inc(len(live))
        JOBS_RUNNING.inc(len(live))
        started = time.perf_counter()
        try:
            images = self._render(live)
        except SdstackError as error:
            for handle in live:
                self._fail(handle, handle.stop_reason() or error)
        except Exception:  # a bug in a library or ours: the jobs fail, the worker lives on
            log.exception("generation failed")
            for handle in live:
                self._fail(handle, SdstackError("generation failed; see the generator log"))
        else:
            self._finish(live, images, time.perf_counter() - started)
        finally:
            JOBS_RUNNING.dec(len(live))

    def _render(self, live: list[JobHandle]) -> list[RenderedImage]:
        first = live[0]
        job = first.job
        if len(live) > 1:
            seeds = tuple(s for h in live for s in h.job.params.seeds())
            params = replace(job.params, batch_size=len(seeds), explicit_seeds=seeds)
            job = replace(job, params=params)
        last = time.perf_counter()
        preview: list[bytes] = [b""]

        def on_step(done: int, total: int) -> None:
            nonlocal last
            now = time.perf_counter()
            SECONDS_PER_STEP.labels(first.model.name).observe(now - last)
            self._step_seconds, last = now - last, now
            event = Progress(done, total, (total - done) * self._step_seconds, preview[0])
            preview[0] = b""
            for handle in live:
                if handle.done.is_set():
                    continue
                reason = handle.stop_reason()
                if reason is None:
                    handle.publish(event)
                elif len(live) > 1:
                    self._fail(handle, reason)
            if all(h.done.is_set() or h.stop_reason() for h in live):
                raise live[0].stop_reason() or Cancelled("every job of the batch was cancelled")

        def on_preview(image: Image.Image) -> None:
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=70)
            preview[0] = out.getvalue()

        return self.renderer.render(job, first.model, on_step, on_preview)

    def _finish(self, live: list[JobHandle], images: list[RenderedImage], elapsed: float) -> None:
        offset = 0
        for handle in live:
            count = handle.job.params.image_count
            own = [
                replace(image, index=i) for i, image in enumerate(images[offset : offset + count])
            ]
            offset += count
            if handle.done.is_set():
                continue
            JOBS_FINISHED.labels("ok").inc()
            IMAGES_GENERATED.labels(handle.model.name).inc(len(own))
            handle.publish(Finished(own, elapsed, handle.model, handle.job.params))
        log.info("made %d images in %.2fs (%d jobs)", len(images), elapsed, len(live))

    def _stopped_early(self, handle: JobHandle) -> bool:
        reason = handle.stop_reason()
        if reason is not None:
            self._fail(handle, reason)
        return reason is not None

    def _fail(self, handle: JobHandle, error: SdstackError) -> None:
        if handle.done.is_set():
            return
        JOBS_FINISHED.labels(error.reason.lower()).inc()
        handle.publish(Failed(error))

    def _forget_later(self, handle: JobHandle) -> None:
        """Finished jobs stay watchable for a while, then are dropped."""

        def forget() -> None:
            with self._lock:
                if self._jobs.get(handle.job.request_id) is handle:
                    del self._jobs[handle.job.request_id]

        timer = threading.Timer(KEEP_FINISHED_SECONDS, forget)
        timer.daemon = True
        timer.start()
