"""Image generation: `POST /v1/generations` for every mode, its events and cancel.

Modes (SPEC §3): txt2img (optionally with hi-res fix), img2img, inpaint, upscale and
variation. Images come as base64 `data` or as the `image_id` of one of the caller's gallery
images; the results are stored in the gallery with the source as their parent.

The request that starts a job owns it: if its client disconnects before the result
(streaming or not), the job is cancelled on the generator and nothing is stored. A client
of `GET /{request_id}/events` only watches: its leaving cancels nothing.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

from gateway.backends import Owner
from gateway.errors import ERROR_RESPONSES, error_body, error_status
from gateway.generation import Generations, Run, RunEvent
from gateway.generation_body import GenerationCreate
from gateway.routes.images import ImageOut
from services.common.request_context import current_request_id

router = APIRouter(prefix="/v1/generations", tags=["generations"], responses=ERROR_RESPONSES)

REQUEST_ID_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"


class GenerationOut(BaseModel):
    request_id: str
    images: list[ImageOut]

    @classmethod
    def from_run(cls, run: Run) -> GenerationOut:
        return cls(
            request_id=run.request_id, images=[ImageOut.from_message(r) for r in run.records]
        )


class CancelOut(BaseModel):
    request_id: str
    cancelled: bool = Field(description="False when no queued or running job had that id.")


EVENT_STREAM = {
    200: {
        "description": "The stored images; with `stream`, Server-Sent Events "
        "(`queued`, `progress` with an optional JPEG preview, then `result` or `error`).",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def generations(request: Request) -> Generations:
    return request.app.state.generations


@router.post(
    "",
    summary="Make images (any mode) and store them in the gallery",
    response_model=GenerationOut,
    responses=EVENT_STREAM,  # type: ignore[arg-type]
)
async def create_generation(body: GenerationCreate, request: Request, who: Owner) -> Response:
    jobs = generations(request)
    order = body.to_order(who, current_request_id(), jobs.max_pixels)
    run = await run_in_threadpool(jobs.start, order)
    if body.stream:
        return await event_stream(run, owner=jobs)
    await jobs.wait_owned(run, request)
    return JSONResponse(GenerationOut.from_run(run).model_dump(mode="json"))


@router.get(
    "/{request_id}/events",
    summary="Server-Sent Events of a running or recently finished generation",
    responses=EVENT_STREAM,  # type: ignore[arg-type]
    response_class=StreamingResponse,
)
async def generation_events(
    request_id: Annotated[str, Path(pattern=REQUEST_ID_PATTERN)], request: Request, who: Owner
) -> StreamingResponse:
    run = generations(request).watch(who, request_id)
    return await event_stream(run)


@router.post("/{request_id}/cancel", summary="Cancel a queued or running generation")
def cancel_generation(
    request_id: Annotated[str, Path(pattern=REQUEST_ID_PATTERN)], request: Request, who: Owner
) -> CancelOut:
    cancelled = generations(request).cancel(who, request_id)
    return CancelOut(request_id=request_id, cancelled=cancelled)


async def event_stream(run: Run, owner: Generations | None = None) -> StreamingResponse:
    """SSE of a run. An error before the first event (a refused request) is answered as a
    plain JSON error instead, with its HTTP status. With `owner` (this request started the
    run), a client that goes away before the final event abandons the run."""
    events = run.subscribe()
    first = await anext(events)
    if first.kind == "error" and first.error is not None:
        await events.aclose()
        raise first.error

    async def lines() -> AsyncIterator[str]:
        try:
            yield _sse(run, first)
            async for event in events:
                yield _sse(run, event)
        finally:
            await events.aclose()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if owner is None:
        return StreamingResponse(lines(), media_type="text/event-stream", headers=headers)
    return OwnedEventStream(run, owner, lines(), media_type="text/event-stream", headers=headers)


class OwnedEventStream(StreamingResponse):
    """The event stream of the request that started `run`. It ends before the run only when
    its client went away (Starlette stops a response on disconnect, before or after its
    first line), and then the run is abandoned."""

    def __init__(
        self, run: Run, jobs: Generations, content: AsyncIterator[str], **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self.run = run
        self.jobs = jobs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.run.done:
                self.jobs.abandon(self.run)  # not awaited: this may run cancelled


def _sse(run: Run, event: RunEvent) -> str:
    data: dict[str, object] = {"request_id": run.request_id}
    if event.kind == "queued":
        data |= {"position": event.position, "queue_depth": event.queue_depth}
    elif event.kind == "progress" and event.progress is not None:
        p = event.progress
        preview = p.preview_jpeg
        data |= {
            "step": p.step,
            "total_steps": p.total_steps,
            "job_no": p.job_no,
            "job_count": p.job_count,
            "progress": round(p.progress, 4),
            "eta_seconds": round(p.eta_seconds, 3),
            "preview": "data:image/jpeg;base64," + base64.b64encode(preview).decode()
            if preview
            else None,
        }
    elif event.kind == "result":
        data = GenerationOut.from_run(run).model_dump(mode="json")
    elif event.error is not None:
        error = event.error
        details = [{"field": v.field, "rule": v.rule} for v in error.violations]
        data = error_body(error.reason, error.message, details) | {"status": error_status(error)}
    return f"event: {event.kind}\ndata: {json.dumps(data)}\n\n"
