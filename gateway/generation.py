"""The one generation workflow of the gateway, shared by `/v1` and the A1111 API:
resolve the request's images as the caller, run the job on a generator replica, store
the images in the gallery.

A job runs in a thread of its own (`Run`), so that its progress can be read by
`/sdapi/v1/progress` or watched (`/v1/generations/{id}/events`) from any request of its
owner. The HTTP request that started a job owns it: when that client goes away before the
result, the job is cancelled on its generator and nothing is stored (`Generations.abandon`);
a client that only watches a job and goes away cancels nothing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import contextvars
import hashlib
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import grpc
from starlette.requests import Request

from gateway.backends import Backends
from services.common.errors import (
    AlreadyExists,
    Cancelled,
    InvalidArgument,
    NotFound,
    SdstackError,
    Unavailable,
)
from services.common.generation import GenerationRequest, ImageSource, LoraUse, Settings
from services.common.generation.proto import request_to_proto, settings_from_proto
from services.common.generation.request import Renamer, renamed, validated
from services.common.images import MAX_IMAGE_BYTES, decode_image
from services.common.proto.sdstack.v1 import common_pb2, gallery_pb2, generator_pb2

log = logging.getLogger(__name__)

INPUT_PIXEL_FACTOR = 4  # inputs may be larger than outputs: they are resized or upscaled
KEEP_FINISHED_SECONDS = 300.0
DEADLINE_MARGIN_SECONDS = 30.0
MAX_JOB_ID_CHARS = 64
_DATA_URL = re.compile(r"^data:[\w/+.\-]+;base64,", re.IGNORECASE)
_IMAGE_ID = re.compile(r"^[0-9a-f]{32}$")
_MAX_BASE64_CHARS = (MAX_IMAGE_BYTES + 2) // 3 * 4


# -- inputs ------------------------------------------------------------------------------


def decode_base64(text: str, field_name: str) -> bytes:
    """Bytes of a base64 string (a `data:` URL prefix and whitespace allowed, as A1111 does)."""
    cleaned = "".join(_DATA_URL.sub("", text.strip(), count=1).split())
    if len(cleaned) > _MAX_BASE64_CHARS:
        raise InvalidArgument(field_name, f"must be at most {MAX_IMAGE_BYTES} bytes")
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(field_name, "is not valid base64") from None


def check_image(data: bytes, field_name: str, max_pixels: int) -> None:
    """Refuses what is not a whole PNG, JPEG or WebP within the input pixel budget."""
    decode_image(data, field_name, max_pixels=max_pixels * INPUT_PIXEL_FACTOR)


def check_image_id(image_id: str, field_name: str) -> str:
    if not _IMAGE_ID.match(image_id):
        raise InvalidArgument(field_name, "must be a gallery image id (32 hex digits)")
    return image_id


def image_from_base64(text: str, field_name: str, max_pixels: int) -> ImageSource:
    """A request's inline image, decoded from base64 and checked."""
    data = decode_base64(text, field_name)
    check_image(data, field_name, max_pixels)
    return ImageSource(data=data)


def image_from_gallery(image_id: str, field_name: str) -> ImageSource:
    return ImageSource(image_id=check_image_id(image_id, field_name))


@dataclass
class GenerationOrder:
    """A checked request as the gateway received it; its gallery images are fetched as
    the owner, and its styles applied, when it starts."""

    owner: str
    request_id: str
    request: GenerationRequest
    save: bool = True
    label: str = "txt2img"
    styles: tuple[str, ...] = ()
    rename: Renamer = str
    """The edge's field names for the request's domain paths (for errors found late)."""


def job_id(owner: str, request_id: str) -> str:
    """The generator's id of a job: the request id under the owner's tag, so that one user
    can never watch or cancel another's job, whatever ids they choose."""
    tag = hashlib.sha256(owner.encode()).hexdigest()[:8]
    scoped = f"{tag}-{request_id}"
    if len(scoped) <= MAX_JOB_ID_CHARS:
        return scoped
    return f"{tag}-{hashlib.sha256(request_id.encode()).hexdigest()[:40]}"


def apply_style(settings: Settings, style: generator_pb2.Style) -> Settings:
    """A style preset applied to a request: its prompt template around the prompt, its
    trigger words and negative prompt added, its LoRA with its weight."""
    template = style.prompt_template or "{prompt}"
    if "{prompt}" in template:
        prompt = template.replace("{prompt}", settings.prompt)
    else:
        prompt = ", ".join(filter(None, [settings.prompt, template]))
    words = [word for word in style.trigger_words if word not in prompt]
    loras = list(settings.loras)
    if style.lora:
        weight = style.weight if style.HasField("weight") else 1.0
        loras.append(LoraUse(name=style.lora, weight=weight))
    changed = {
        "prompt": ", ".join(filter(None, [prompt, *words])),
        "negative_prompt": ", ".join(
            filter(None, [settings.negative_prompt, style.negative_prompt])
        ),
        "loras": loras,
    }
    return validated(Settings, settings.model_dump() | changed)


async def client_gone(request: Request) -> None:
    """Returns when the client of `request` disconnects. Its body must have been read: what
    `receive` gives after it is the disconnect (Starlette's streaming responses listen the
    same way; `request.is_disconnected()` cannot see it through the middlewares' task
    groups, which never finish inside its already-cancelled scope)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# -- a running job -----------------------------------------------------------------------


@dataclass(frozen=True)
class ProgressState:
    step: int
    total_steps: int
    job_no: int
    job_count: int
    progress: float
    eta_seconds: float
    preview_jpeg: bytes = b""

    @classmethod
    def from_message(cls, event: common_pb2.ProgressEvent) -> ProgressState:
        return cls(
            step=event.step,
            total_steps=event.total_steps,
            job_no=event.job_no or 1,
            job_count=event.job_count or 1,
            progress=min(1.0, max(0.0, event.progress)),
            eta_seconds=event.eta.ToTimedelta().total_seconds(),
            preview_jpeg=event.preview_jpeg,
        )


EventKind = Literal["queued", "progress", "result", "error"]


@dataclass(frozen=True)
class RunEvent:
    kind: EventKind
    position: int = 0
    queue_depth: int = 0
    progress: ProgressState | None = None
    error: SdstackError | None = None

    @property
    def final(self) -> bool:
        return self.kind in ("result", "error")


Source = Callable[[], Generator[generator_pb2.GenerateEvent, None, None]]


class Run:
    """One job: its events for every subscriber (replayed from the first), its state for
    progress polls, and at the end its images and gallery records or its error."""

    def __init__(self, owner: str, request_id: str, label: str, *, remote: bool = False) -> None:
        self.owner = owner
        self.request_id = request_id
        self.label = label
        self.remote = remote  # watching a job another gateway started
        self.created = datetime.now(UTC)
        self.finished_at: float | None = None
        self.queued: RunEvent | None = None
        self.progress: ProgressState | None = None
        self.preview_jpeg = b""  # the latest preview, kept between steps that send none
        self.images: list[common_pb2.GeneratedImage] = []
        self.records: list[gallery_pb2.Image] = []
        self.error: SdstackError | None = None
        self.abandoned = threading.Event()  # the request that started the job is gone
        self._events: list[RunEvent] = []
        self._listeners: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[RunEvent]]] = []
        self._lock = threading.Lock()

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    def publish(self, event: RunEvent) -> None:
        with self._lock:
            self._events.append(event)
            if event.final:
                self.finished_at = time.monotonic()
            listeners = list(self._listeners)
        for loop, queue in listeners:
            with contextlib.suppress(RuntimeError):  # that subscriber's event loop is gone
                loop.call_soon_threadsafe(queue.put_nowait, event)

    async def subscribe(self) -> AsyncIterator[RunEvent]:
        """Every event from the first until the final one."""
        queue: asyncio.Queue[RunEvent] = asyncio.Queue()
        entry = (asyncio.get_running_loop(), queue)
        with self._lock:
            history = list(self._events)
            self._listeners.append(entry)
        try:
            # One lock orders the snapshot and the registration against `publish`: an event is
            # either in the history or sent to the queue, never both.
            for event in history:
                yield event
                if event.final:
                    return
            while True:
                event = await queue.get()
                yield event
                if event.final:
                    return
        finally:
            with self._lock:
                self._listeners.remove(entry)

    async def wait(self) -> Run:
        """Waits for the end; raises the job's error."""
        async for _ in self.subscribe():
            pass
        if self.error is not None:
            raise self.error
        return self

    def run(self, source: Source, store: Callable[[list[common_pb2.GeneratedImage]], list]) -> None:
        """Consumes the generator's events (in the run's thread), then stores the images."""
        try:
            self._consume(source)
            self._check_owned()
            if not self.images:
                raise SdstackError("the generator ended the job without images")
            self.records = store(self.images)
            self.publish(RunEvent("result"))
        except SdstackError as error:
            self.error = error
            self.publish(RunEvent("error", error=error))
        except Exception:  # a bug of ours: the job fails, the gateway lives on
            log.exception("generation %s failed", self.request_id)
            self.error = SdstackError(f"internal error (request id {self.request_id})")
            self.publish(RunEvent("error", error=self.error))

    def _consume(self, source: Source) -> None:
        try:
            # Closing the stream early (abandoned) cancels the generator call, hence the job.
            with contextlib.closing(source()) as messages:
                for message in messages:
                    self._check_owned()
                    self._on_message(message)
        except SdstackError as error:
            raise self._explained(error) from None

    def _explained(self, error: SdstackError) -> SdstackError:
        """UNAVAILABLE once a replica had the job (it was killed, or lost a dependency)
        fails the job, which is never run twice: the client is told so in words, not
        only by gRPC's (e.g. "Socket closed")."""
        if error.status is not grpc.StatusCode.UNAVAILABLE or not self._events or self.remote:
            return error
        return Unavailable(
            f"the generator replica running generation {self.request_id} failed mid-job "
            f"({error.message}); the job was not run again: send it again"
        )

    def _check_owned(self) -> None:
        if self.abandoned.is_set():
            raise Cancelled(f"the client that started generation {self.request_id} went away")

    def _on_message(self, message: generator_pb2.GenerateEvent) -> None:
        which = message.WhichOneof("event")
        if which == "queued":
            event = RunEvent(
                "queued", position=message.queued.position, queue_depth=message.queued.queue_depth
            )
            self.queued = event
            self.publish(event)
        elif which == "progress":
            self.progress = ProgressState.from_message(message.progress)
            self.preview_jpeg = self.progress.preview_jpeg or self.preview_jpeg
            self.publish(RunEvent("progress", progress=self.progress))
        elif which == "result":
            self.images = sorted(message.result.images, key=lambda image: image.index)


class Generations:
    """Starts jobs, keeps them findable by owner and request id for a while after."""

    def __init__(self, backends: Backends, *, max_pixels: int, default_timeout: float) -> None:
        self.backends = backends
        self.max_pixels = max_pixels
        self.default_timeout = default_timeout
        self._runs: dict[tuple[str, str], Run] = {}
        self._lock = threading.Lock()

    def start(self, order: GenerationOrder) -> Run:
        """Fetches the order's gallery images as its owner, applies its styles, then
        starts the job. Blocking (gallery calls): route handlers call it in the thread pool.
        """
        request, parent = self._with_gallery_images(order)
        settings = request.settings
        for name in order.styles:
            settings = apply_style(settings, self.backends.generator.get_style(name))
        request = request.model_copy(
            update={
                "settings": settings,
                "request_id": job_id(order.owner, order.request_id),
                "owner": order.owner,
            }
        )
        try:
            request.check(self.max_pixels)
        except InvalidArgument as error:
            raise renamed(error, order.rename) from None
        message = request_to_proto(request)
        timeout = request.timeout_seconds or self.default_timeout
        run = Run(order.owner, order.request_id, order.label)
        self._register(run)

        def store(images: list[common_pb2.GeneratedImage]) -> list[gallery_pb2.Image]:
            if not order.save:
                return []
            return [self._store(order, image, request, parent) for image in images]

        def source() -> Generator[generator_pb2.GenerateEvent, None, None]:
            yield from self.backends.generator.generate(
                message, timeout=timeout + DEADLINE_MARGIN_SECONDS
            )

        self._spawn(run, source, store)
        return run

    def watch(self, owner: str, request_id: str) -> Run:
        """A local run, or a job another gateway started, watched on its generator."""
        local = self.find(owner, request_id)
        if local is not None:
            return local
        run = Run(owner, request_id, "watch", remote=True)
        generator_id = job_id(owner, request_id)
        self._spawn(run, lambda: self.backends.generator.watch(generator_id), lambda _: [])
        return run

    def cancel(self, owner: str, request_id: str) -> bool:
        """Cancels one of the owner's jobs; an unknown or finished one is not an error."""
        local = self.find(owner, request_id)
        if local is not None and local.done:
            return False
        return self.backends.generator.cancel(job_id(owner, request_id))

    def abandon(self, run: Run) -> None:
        """The client of the request that started `run` went away: the job is cancelled
        on its generator now (a queued job sends no event to stop on) and its images, if
        they come anyway, are not stored. Never blocks: it may run in a cancelled task."""
        if run.done or run.remote or run.abandoned.is_set():
            return
        run.abandoned.set()
        log.info("generation %s: its client went away; cancelling it", run.request_id)
        generator_id = job_id(run.owner, run.request_id)
        thread = threading.Thread(
            target=self._cancel_abandoned, args=(generator_id,), name=f"abandon-{run.request_id}"
        )
        thread.daemon = True
        thread.start()

    def _cancel_abandoned(self, generator_id: str) -> None:
        try:
            self.backends.generator.cancel(generator_id)
        except SdstackError as error:  # the run's own thread still stops at its next event
            log.warning("could not cancel abandoned generation %s: %s", generator_id, error)

    async def wait_owned(self, run: Run, request: Request) -> Run:
        """Waits for the end of a run that `request` started (raising its error); if the
        client goes away first, the run is abandoned and `Cancelled` raised."""
        ended = asyncio.ensure_future(run.wait())
        gone = asyncio.ensure_future(client_gone(request))
        try:
            await asyncio.wait({ended, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not ended.done():
                self.abandon(run)
                raise Cancelled(f"the client of generation {run.request_id} went away")
            return ended.result()
        finally:
            for task in (ended, gone):
                task.cancel()

    def find(self, owner: str, request_id: str) -> Run | None:
        with self._lock:
            return self._runs.get((owner, request_id))

    def of_owner(self, owner: str) -> list[Run]:
        """The owner's runs, newest first."""
        with self._lock:
            runs = [r for (who, _), r in self._runs.items() if who == owner]
        return sorted(runs, key=lambda r: r.created, reverse=True)

    def _register(self, run: Run) -> None:
        now = time.monotonic()
        key = (run.owner, run.request_id)
        with self._lock:
            self._runs = {
                k: r
                for k, r in self._runs.items()
                if r.finished_at is None or now - r.finished_at < KEEP_FINISHED_SECONDS
            }
            existing = self._runs.get(key)
            if existing is not None and not existing.done:
                raise AlreadyExists(f"request_id: a generation {run.request_id} is running")
            self._runs[key] = run

    @staticmethod
    def _spawn(run: Run, source: Source, store: Callable) -> None:
        context = contextvars.copy_context()  # the request id follows the job into its thread
        thread = threading.Thread(
            target=context.run, args=(run.run, source, store), name=f"run-{run.request_id}"
        )
        thread.daemon = True
        thread.start()

    def _with_gallery_images(self, order: GenerationOrder) -> tuple[GenerationRequest, str]:
        """The request with its gallery images as bytes, and the gallery id of its source
        image ("" when it came inline)."""
        task, parent, images = order.request.task, "", {}
        for name in ("image", "mask"):
            image = getattr(task, name, None)
            if isinstance(image, ImageSource) and image.image_id:
                field_name = order.rename(f"task.{name}.image_id")
                data = self._gallery_bytes(order.owner, image.image_id, field_name)
                images[name] = ImageSource(data=data)
                parent = parent or image.image_id
        if not images:
            return order.request, parent
        return order.request.model_copy(update={"task": task.model_copy(update=images)}), parent

    def _gallery_bytes(self, owner: str, image_id: str, field_name: str) -> bytes:
        try:
            _, chunks = self.backends.gallery.image_file(owner, image_id)
            data = b"".join(chunks)
        except NotFound:
            raise NotFound("image", image_id) from None
        check_image(data, field_name, self.max_pixels)
        return data

    def _store(
        self,
        order: GenerationOrder,
        image: common_pb2.GeneratedImage,
        request: GenerationRequest,
        parent: str,
    ) -> gallery_pb2.Image:
        """The image and what made it: the generator's resolved settings with the task's
        options; the source image by its gallery id (an inline one is not kept)."""
        return self.backends.gallery.create_image(
            gallery_pb2.CreateImageRequest(
                owner=order.owner,
                request_id=order.request_id,
                png=image.png,
                generation=stored_generation(request, image.params, parent),
                parent_image_id=parent,
            )
        )


def stored_generation(
    request: GenerationRequest, used: common_pb2.GenerationParams, parent: str
) -> generator_pb2.GenerateRequest:
    """What the gallery keeps of a request: settings as the generator used them, the task
    with its source as the parent's gallery id, no mask, nothing of how the job ran."""
    task = request.task
    images = {
        name: ImageSource(image_id=parent if name == "image" else "")
        for name in ("image", "mask")
        if name in type(task).model_fields
    }
    kept = GenerationRequest(
        settings=settings_from_proto(used), task=task.model_copy(update=images)
    )
    return request_to_proto(kept)
