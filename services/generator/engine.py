"""The generator's core: a bounded priority queue, the running jobs, the jobs' event streams,
deadlines and cancellation.

Jobs leave the queue by priority into the *running set*, where each runs in a thread of its
own and shares every U-Net pass with the others (`step_batching`): a job joins between two
denoising steps of the running ones, whatever its prompt, steps, mode or LoRAs. The running
set holds jobs of one checkpoint, at most `max_batch_images` images and `MAX_LOADED_LORAS`
distinct LoRAs; a
job that does not fit waits at the head of the queue until the set drains enough for it,
and nothing behind it overtakes it.

Transport-agnostic: the servicer translates its events to protobuf.
"""

from __future__ import annotations

import heapq
import io
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

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
from services.generator.jobs import GenerationJob
from services.generator.loras import MAX_LOADED_LORAS
from services.generator.renderer import RenderedImage, Renderer
from services.generator.step_batching import JobTurn, StepBatcher

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
    "sdstack_generator_batched_jobs_total", "Jobs that shared U-Net passes with other jobs."
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
    job: GenerationJob


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


class Engine:
    def __init__(
        self,
        registry: ModelRegistry,
        renderer: Renderer,
        queue_size: int,
        *,
        default_timeout: float = 600.0,
        max_batch_images: int = MAX_BATCH_IMAGES,
    ) -> None:
        self.registry = registry
        self.renderer = renderer
        self.queue_size = queue_size
        self.default_timeout = default_timeout
        self.max_batch_images = max_batch_images
        self._waiting: list[tuple[int, int, JobHandle]] = []
        self._order = itertools.count()
        self._jobs: dict[str, JobHandle] = {}
        self._running: dict[str, JobHandle] = {}
        self._finished: deque[tuple[float, JobHandle]] = deque()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._batcher = StepBatcher()
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="generator-dispatcher", daemon=True
        )
        self._step_seconds = 1.0

    def start(self) -> None:
        self._dispatcher.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Cancels the jobs left (after the server drained), then ends every thread."""
        with self._wake:
            self._stopping = True
            for handle in self._jobs.values():
                handle.cancelled.set()
            self._wake.notify_all()
            threads = [self._dispatcher, *self._threads]
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

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
            self._forget_expired()
            running = self._jobs.get(job.request_id)
            if running is not None and not running.done.is_set():
                raise AlreadyExists(f"request_id: a job {job.request_id} is already running")
            waiting = len(self._waiting)
            if waiting >= self.queue_size:
                retry = max(1.0, waiting * job.settings.steps * self._step_seconds / 2)
                raise Overloaded(f"the generator queue is full ({waiting} waiting)", retry)
            self._jobs[job.request_id] = handle
            heapq.heappush(self._waiting, (-job.priority, next(self._order), handle))
            QUEUE_DEPTH.set(len(self._waiting))
            self._wake.notify_all()
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

    def _dispatch(self) -> None:
        """Moves jobs from the queue into the running set, each into a thread of its own."""
        while (handle := self._next_admitted()) is not None:
            thread = threading.Thread(
                target=self._run_job, args=(handle,), name="generator-job", daemon=True
            )
            with self._wake:
                self._threads.add(thread)
            thread.start()

    def _next_admitted(self) -> JobHandle | None:
        """The head of the queue once the running set can take it (None when stopping)."""
        with self._wake:
            while not self._stopping and not (self._waiting and self._fits(self._waiting[0][2])):
                self._wake.wait()
            if self._stopping:
                for _, _, handle in self._waiting:
                    handle.publish(Failed(Cancelled("the generator is shutting down")))
                self._waiting.clear()
                return None
            _, _, handle = heapq.heappop(self._waiting)
            self._running[handle.job.request_id] = handle
            QUEUE_DEPTH.set(len(self._waiting))
            return handle

    def _fits(self, handle: JobHandle) -> bool:
        """Whether the running set can take `handle`: the same checkpoint (everything else,
        LoRAs included, may differ), room for its images, and room for its LoRAs among the
        adapters loaded at once."""
        running = list(self._running.values())
        if not running:
            return True
        if running[0].model.sha256 != handle.model.sha256:
            return False
        images = sum(h.job.settings.batch_size for h in running)
        loras = {use.name for h in [*running, handle] for use in h.job.loras}
        return (
            images + handle.job.settings.batch_size <= self.max_batch_images
            and len(loras) <= MAX_LOADED_LORAS
        )

    def _run_job(self, handle: JobHandle) -> None:
        token = set_request_id(handle.job.request_id)
        try:
            if not self._stopped_early(handle):
                self._run(handle)
        finally:
            reset_request_id(token)
            with self._wake:
                del self._running[handle.job.request_id]
                self._threads.discard(threading.current_thread())
                self._wake.notify_all()
            self._forget_later(handle)

    def _run(self, handle: JobHandle) -> None:
        JOBS_RUNNING.inc()
        started = time.perf_counter()
        try:
            with self._batcher.turn() as turn:
                images = self._render(handle, turn)
            if turn.shared_passes:
                BATCHED_JOBS.inc()
        except SdstackError as error:
            self._fail(handle, handle.stop_reason() or error)
        except Exception:  # a bug in a library or ours: the job fails, the generator lives on
            log.exception("generation failed")
            self._fail(handle, SdstackError("generation failed; see the generator log"))
        else:
            self._finish(handle, images, time.perf_counter() - started)
        finally:
            JOBS_RUNNING.dec()

    def _render(self, handle: JobHandle, turn: JobTurn) -> list[RenderedImage]:
        last = time.perf_counter()
        preview: list[bytes] = [b""]

        def on_step(done: int, total: int) -> None:
            nonlocal last
            now = time.perf_counter()
            SECONDS_PER_STEP.labels(handle.model.name).observe(now - last)
            self._step_seconds, last = now - last, now
            reason = handle.stop_reason()
            if reason is not None:
                raise reason
            handle.publish(Progress(done, total, (total - done) * self._step_seconds, preview[0]))
            preview[0] = b""

        def on_preview(image: Image.Image) -> None:
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=70)
            preview[0] = out.getvalue()

        return self.renderer.render(handle.job, handle.model, on_step, on_preview, turn)

    def _finish(self, handle: JobHandle, images: list[RenderedImage], elapsed: float) -> None:
        JOBS_FINISHED.labels("ok").inc()
        IMAGES_GENERATED.labels(handle.model.name).inc(len(images))
        handle.publish(Finished(images, elapsed, handle.model, handle.job))
        log.info("made %d images in %.2fs", len(images), elapsed)

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
        """Finished jobs stay watchable for a while, then are dropped (swept as jobs come
        and go: no timer thread per job)."""
        with self._lock:
            self._finished.append((time.monotonic() + KEEP_FINISHED_SECONDS, handle))
            self._forget_expired()

    def _forget_expired(self) -> None:
        """Drops the finished jobs kept long enough; the caller holds the lock."""
        now = time.monotonic()
        while self._finished and self._finished[0][0] <= now:
            _, handle = self._finished.popleft()
            if self._jobs.get(handle.job.request_id) is handle:
                del self._jobs[handle.job.request_id]
