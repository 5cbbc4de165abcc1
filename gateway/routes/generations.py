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
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from google.protobuf import duration_pb2
from pydantic import BaseModel, Field, WithJsonSchema, model_validator
from starlette.types import Receive, Scope, Send

from gateway.backends import Owner
from gateway.errors import ERROR_RESPONSES, error_body, error_status
from gateway.generation import (
    PREVIEW_METHODS,
    GenerationOrder,
    Generations,
    ImageInput,
    PreviewMethod,
    Run,
    RunEvent,
    Slot,
    check_pixel_budget,
)
from gateway.routes.images import ImageOut
from services.common.errors import FieldViolation, InvalidArgument
from services.common.images import MAX_IMAGE_BYTES
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2
from services.common.request_context import current_request_id

router = APIRouter(prefix="/v1/generations", tags=["generations"], responses=ERROR_RESPONSES)

REQUEST_ID_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
NAME_PATTERN = r"^[A-Za-z0-9_()+\-][A-Za-z0-9 _.()+\-]{0,127}$"
MAX_BASE64_CHARS = (MAX_IMAGE_BYTES + 2) // 3 * 4 + 256
Mode = Literal["txt2img", "img2img", "inpaint", "upscale", "variation"]
_MODES = {
    "txt2img": generator_pb2.GENERATION_MODE_TXT2IMG,
    "img2img": generator_pb2.GENERATION_MODE_IMG2IMG,
    "inpaint": generator_pb2.GENERATION_MODE_INPAINT,
    "upscale": generator_pb2.GENERATION_MODE_UPSCALE,
    "variation": generator_pb2.GENERATION_MODE_VARIATION,
}
_IMAGE_SLOTS: dict[str, Slot] = {
    "img2img": "img2img.init_image",
    "inpaint": "img2img.init_image",
    "upscale": "upscale.image",
    "variation": "variation.source",
}
_RESIZE = {
    "just_resize": generator_pb2.RESIZE_MODE_JUST_RESIZE,
    "crop_and_resize": generator_pb2.RESIZE_MODE_CROP_AND_RESIZE,
    "resize_and_fill": generator_pb2.RESIZE_MODE_RESIZE_AND_FILL,
    "latent_upscale": generator_pb2.RESIZE_MODE_LATENT_UPSCALE,
}
_FILLS = {
    "fill": generator_pb2.INPAINT_FILL_FILL,
    "original": generator_pb2.INPAINT_FILL_ORIGINAL,
    "latent_noise": generator_pb2.INPAINT_FILL_LATENT_NOISE,
    "latent_nothing": generator_pb2.INPAINT_FILL_LATENT_NOTHING,
}


OptionalSize = Annotated[
    int | None,
    Field(ge=64, le=2048, multiple_of=8),
    WithJsonSchema({"type": ["integer", "null"], "minimum": 64, "maximum": 2048, "multipleOf": 8}),
]
"""A size in pixels, or null for the default (the schema states the rules at its top)."""


class Strict(BaseModel):
    model_config = {"extra": "forbid"}


class ImageIn(Strict):
    """An image: base64 `data` (PNG, JPEG or WebP, ≤ 32 MiB) or the `image_id` of one of
    your gallery images. Exactly one of the two."""

    data: str | None = Field(None, max_length=MAX_BASE64_CHARS)
    image_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")

    @model_validator(mode="after")
    def _one_source(self) -> ImageIn:
        if (self.data is None) == (self.image_id is None):
            raise ValueError("give exactly one of data and image_id")
        return self

    def to_input(self, field_name: str, max_pixels: int) -> ImageInput:
        if self.image_id is not None:
            return ImageInput.from_gallery(self.image_id, f"{field_name}.image_id")
        return ImageInput.from_base64(self.data or "", f"{field_name}.data", max_pixels)


class LoraIn(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="LoRA name as listed by /v1/loras.")
    weight: float = Field(1.0, ge=-4, le=4, allow_inf_nan=False)
    text_encoder_weight: float | None = Field(
        None, ge=-4, le=4, allow_inf_nan=False, description="Default: same as weight."
    )


class Img2ImgIn(Strict):
    denoising_strength: float = Field(0.75, ge=0, le=1, allow_inf_nan=False)
    resize_mode: Literal["just_resize", "crop_and_resize", "resize_and_fill", "latent_upscale"] = (
        "just_resize"
    )
    initial_noise_multiplier: float = Field(1.0, ge=0, le=1.5, allow_inf_nan=False)


class InpaintIn(Strict):
    mask_blur: int = Field(4, ge=0, le=64, description="Blur radius of the mask in pixels.")
    fill: Literal["fill", "original", "latent_noise", "latent_nothing"] = "original"
    only_masked: bool = Field(False, description="Repaint the masked region at full resolution.")
    only_masked_padding: int = Field(32, ge=0, le=256)
    invert_mask: bool = False


class HiresIn(Strict):
    """A1111 hi-res fix: generate, upscale, second pass (txt2img only)."""

    scale: float = Field(2.0, gt=1, le=4, allow_inf_nan=False)
    upscaler: str = Field("Latent", max_length=128, description="A name from /v1/upscalers.")
    second_pass_steps: int = Field(0, ge=0, le=150, description="0 = same as steps.")
    denoising_strength: float = Field(0.7, ge=0, le=1, allow_inf_nan=False)
    resize_x: int = Field(0, ge=0, le=4096, multiple_of=8, description="0 = use scale.")
    resize_y: int = Field(0, ge=0, le=4096, multiple_of=8, description="0 = use scale.")
    sampler: str = Field("", max_length=64, description="Default: the first pass's.")
    prompt: str = Field("", max_length=20_000)
    negative_prompt: str = Field("", max_length=20_000)


class UpscaleIn(Strict):
    upscaler: str = Field("Lanczos", max_length=128, description="A name from /v1/upscalers.")
    scale: float = Field(2.0, ge=1, le=8, allow_inf_nan=False)
    tiled_refine: bool = Field(False, description="An img2img pass per tile, stitched.")
    tile_size: int = Field(512, ge=256, le=1024, multiple_of=8)
    tile_overlap: int = Field(64, ge=0, le=256)
    denoising_strength: float = Field(0.382, ge=0, le=1, allow_inf_nan=False)


class VariationIn(Strict):
    strength: Literal["subtle", "strong"] = "subtle"


class PreviewIn(Strict):
    every_n_steps: int = Field(1, ge=1, le=150)
    max_size: int = Field(256, ge=32, le=1024)
    method: PreviewMethod = Field(
        PREVIEW_METHODS[0],
        description="A1111's preview types: a free linear projection of the latents, a TAESD "
        "decoder's picture (needs a vae_approx model), or the VAE's decode of the current "
        "estimate (the picture as it would end now).",
    )


class GenerationCreate(Strict):
    """A generation request. Defaults follow the A1111 web UI."""

    mode: Mode = "txt2img"
    prompt: str = Field("", max_length=20_000)
    negative_prompt: str = Field("", max_length=20_000)
    styles: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(
        default_factory=list, max_length=8, description="Style presets from /v1/styles."
    )
    model: str = Field("", max_length=128, description="Checkpoint name; default: the default.")
    vae: str = Field("", max_length=128, description="VAE name; default: the checkpoint's.")
    loras: list[LoraIn] = Field(default_factory=list, max_length=16)
    sampler: str = Field("Euler a", max_length=64, description="A1111 sampler name.")
    schedule_type: Literal["Automatic", "Karras", "Exponential", "SGM Uniform", "Simple"] = (
        "Automatic"
    )
    steps: int = Field(20, ge=1, le=150)
    cfg_scale: float = Field(7.0, ge=0, le=30, allow_inf_nan=False)
    width: OptionalSize = Field(None, description="Default 512, or the source image's.")
    height: OptionalSize = Field(None, description="Default 512, or the source image's.")
    seed: int = Field(-1, ge=-1, le=4_294_967_294, description="-1 draws a random seed.")
    subseed: int = Field(-1, ge=-1, le=4_294_967_294, description="Variation seed.")
    subseed_strength: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)
    batch_size: int = Field(1, ge=1, le=8)
    n_iter: int = Field(1, ge=1, le=16)
    clip_skip: int = Field(1, ge=1, le=12)
    eta: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    tiling: bool = Field(False, description="An image that tiles seamlessly (A1111 Tiling).")
    deep_cache_interval: int = Field(
        0,
        ge=0,
        le=10,
        description="DeepCache: every Nth U-Net pass runs whole, the ones between reuse its "
        "deep features (about 2× faster at 3 on SD 1.5; the image changes slightly). 0/1: off.",
    )
    image: ImageIn | None = Field(None, description="Source image of every mode but txt2img.")
    mask: ImageIn | None = Field(None, description="inpaint: white = repaint, black = keep.")
    img2img: Img2ImgIn = Field(default_factory=Img2ImgIn)
    inpaint: InpaintIn = Field(default_factory=InpaintIn)
    hires: HiresIn | None = Field(None, description="Hi-res fix (txt2img); off when null.")
    upscale: UpscaleIn = Field(default_factory=UpscaleIn)
    variation: VariationIn = Field(default_factory=VariationIn)
    preview: PreviewIn | None = Field(None, description="Previews in the event stream.")
    priority: int = Field(0, ge=-10, le=10, description="Higher runs first.")
    timeout_seconds: float | None = Field(None, gt=0, le=3600, allow_inf_nan=False)
    stream: bool = Field(False, description="Answer with Server-Sent Events.")

    def to_order(self, owner: str, request_id: str, max_pixels: int) -> GenerationOrder:
        """The generator request, after the checks that span several fields."""
        self._check_images()
        width, height = self.width or 512, self.height or 512
        check_pixel_budget(width, height, max_pixels, "height")
        images: dict[Slot, ImageInput] = {}
        if self.image is not None:
            images[_IMAGE_SLOTS[self.mode]] = self.image.to_input("image", max_pixels)
        if self.mask is not None:
            images["inpaint.mask"] = self.mask.to_input("mask", max_pixels)
        request = generator_pb2.GenerateRequest(mode=_MODES[self.mode], priority=self.priority)
        request.params.CopyFrom(self._params())
        self._mode_options(request)
        if self.preview is not None:
            request.preview.CopyFrom(
                generator_pb2.PreviewOptions(enabled=True, **self.preview.model_dump())
            )
        if self.timeout_seconds is not None:
            request.timeout.CopyFrom(_duration(self.timeout_seconds))
        return GenerationOrder(
            owner=owner,
            request_id=request_id,
            request=request,
            images=images,
            label=self.mode,
            timeout_seconds=self.timeout_seconds,
            styles=tuple(self.styles),
        )

    def _check_images(self) -> None:
        needs_image, needs_mask = self.mode != "txt2img", self.mode == "inpaint"
        rules = [
            (needs_image == (self.image is not None), "image", _needed(needs_image)),
            (needs_mask == (self.mask is not None), "mask", _needed(needs_mask)),
            (self.hires is None or self.mode == "txt2img", "hires", "is for txt2img only"),
        ]
        broken = [
            FieldViolation(f, f"{rule} (mode {self.mode})") for ok, f, rule in rules if not ok
        ]
        if broken:
            raise InvalidArgument.many(broken)

    def _params(self) -> common_pb2.GenerationParams:
        params = common_pb2.GenerationParams(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            model=self.model,
            vae=self.vae,
            loras=[
                common_pb2.LoraRef(
                    name=lora.name, weight=lora.weight, text_encoder_weight=lora.text_encoder_weight
                )
                for lora in self.loras
            ],
            sampler=self.sampler,
            schedule_type=self.schedule_type,
            steps=self.steps,
            cfg_scale=self.cfg_scale,
            width=self.width or (512 if self.image is None else 0),
            height=self.height or (512 if self.image is None else 0),
            seed=self.seed,
            subseed=self.subseed,
            subseed_strength=self.subseed_strength,
            batch_size=self.batch_size,
            n_iter=self.n_iter,
            clip_skip=self.clip_skip,
            tiling=self.tiling,
            deep_cache_interval=self.deep_cache_interval,
        )
        if self.eta is not None:
            params.eta = self.eta
        return params

    def _mode_options(self, request: generator_pb2.GenerateRequest) -> None:
        if self.mode in ("img2img", "inpaint"):
            o = self.img2img
            request.img2img.denoising_strength = o.denoising_strength
            request.img2img.resize_mode = _RESIZE[o.resize_mode]
            request.img2img.initial_noise_multiplier = o.initial_noise_multiplier
        if self.mode == "inpaint":
            i = self.inpaint
            request.inpaint.mask_blur = i.mask_blur
            request.inpaint.fill = _FILLS[i.fill]
            request.inpaint.only_masked = i.only_masked
            request.inpaint.only_masked_padding = i.only_masked_padding
            request.inpaint.invert_mask = i.invert_mask
        if self.mode == "upscale":
            request.upscale.MergeFrom(generator_pb2.UpscaleOptions(**self.upscale.model_dump()))
        if self.mode == "variation":
            strong = self.variation.strength == "strong"
            request.variation.strength = (
                generator_pb2.VARIATION_STRENGTH_STRONG
                if strong
                else generator_pb2.VARIATION_STRENGTH_SUBTLE
            )
        if self.hires is not None:
            request.hires.MergeFrom(
                generator_pb2.HiresOptions(enabled=True, **self.hires.model_dump())
            )


def _needed(needed: bool) -> str:
    return "is required" if needed else "is not used"


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


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
