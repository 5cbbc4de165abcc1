"""The AUTOMATIC1111-compatible API under `/sdapi/v1`, for clients written for A1111.

Same routes, field names, defaults and response shapes. Where A1111 has one global state
(the loaded checkpoint, the progress of "the" job), sdstack keeps one per user: options
set with POST /options apply to that user's requests, and /progress, /interrupt and /skip
concern that user's newest job. A job runs as one generator job, so /skip stops it like
/interrupt; an interrupted request answers 200 with no images, as A1111 answers with
what it has.
"""

from __future__ import annotations

import io
import threading
from typing import Any

import grpc
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from PIL import Image

from gateway.a1111.schemas import (
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
    GenerationResponse,
    Img2ImgRequest,
    LatentUpscaleMode,
    Lora,
    PngInfoRequest,
    PngInfoResponse,
    ProgressResponse,
    ProgressState,
    PromptStyle,
    Sampler,
    Scheduler,
    SdModel,
    SdVae,
    Txt2ImgRequest,
    Upscaler,
)
from gateway.a1111.translate import (
    NO_VAE,
    SCHEDULERS,
    GenerationOrder,
    Resolved,
    UserOptions,
    apply_settings,
    b64,
    extras_order,
    find_model,
    generation_response,
    img2img_order,
    png_parameters,
    resolve_settings,
    txt2img_order,
)
from gateway.backends import Backends, Clients, Owner
from gateway.errors import ERROR_RESPONSES
from gateway.generation import Generations, Run, check_image, decode_base64
from services.common.errors import InvalidArgument, NotFound, SdstackError
from services.common.generation import PREVIEW_METHODS
from services.common.generation.settings import MAX_CLIP_SKIP, MAX_STEPS
from services.common.proto.sdstack.v1 import common_pb2
from services.common.request_context import current_request_id

router = APIRouter(prefix="/sdapi/v1", tags=["a1111"], responses=ERROR_RESPONSES)


class OptionsBook:
    """Each user's A1111 options, in this gateway's memory."""

    def __init__(self) -> None:
        self._options: dict[str, UserOptions] = {}
        self._lock = threading.Lock()

    def get(self, owner: str) -> UserOptions:
        with self._lock:
            return self._options.setdefault(owner, UserOptions())


def _jobs(request: Request) -> Generations:
    return request.app.state.generations


def _options(request: Request, owner: str) -> UserOptions:
    return request.app.state.a1111_options.get(owner)


def _lister(backends: Backends):
    return lambda kind: list(backends.generator.list_models(kind).models)


async def _generate(
    request: Request, order: GenerationOrder, body: Txt2ImgRequest, owner: str
) -> GenerationResponse:
    """Resolves the user's settings, runs the order, answers in A1111's shape."""
    clients: Backends = request.app.state.backends
    settings: Resolved = await run_in_threadpool(
        resolve_settings, body, _options(request, owner), _lister(clients)
    )
    apply_settings(order, settings)
    jobs = _jobs(request)
    run = await run_in_threadpool(jobs.start, order)
    try:
        await jobs.wait_owned(run, request)
    except SdstackError as error:
        if error.status is not grpc.StatusCode.CANCELLED:
            raise  # interrupted: A1111 answers with what it has, here no images
    return generation_response(run, body, settings)


@router.post("/txt2img", summary="A1111 txt2img")
async def txt2img(body: Txt2ImgRequest, request: Request, who: Owner) -> GenerationResponse:
    max_pixels = _jobs(request).max_pixels
    order = txt2img_order(body, who, current_request_id(), _options(request, who), max_pixels)
    return await _generate(request, order, body, who)


@router.post("/img2img", summary="A1111 img2img and inpainting (with `mask`)")
async def img2img(body: Img2ImgRequest, request: Request, who: Owner) -> GenerationResponse:
    max_pixels = _jobs(request).max_pixels
    order = img2img_order(body, who, current_request_id(), _options(request, who), max_pixels)
    return await _generate(request, order, body, who)


@router.post("/extra-single-image", summary="Upscale one image (A1111 extras)")
async def extra_single_image(
    body: ExtrasSingleImageRequest, request: Request, who: Owner
) -> ExtrasSingleImageResponse:
    jobs = _jobs(request)
    order = extras_order(body, who, current_request_id(), jobs.max_pixels)
    run = await run_in_threadpool(jobs.start, order)
    await jobs.wait_owned(run, request)
    return ExtrasSingleImageResponse(html_info="", image=b64(run.images[0].png))


@router.post("/png-info", summary="The generation parameters in a PNG")
def png_info(body: PngInfoRequest, request: Request) -> PngInfoResponse:
    if not body.image.strip():
        return PngInfoResponse(info="", items={}, parameters={})
    data = decode_base64(body.image, "image")
    check_image(data, "image", _jobs(request).max_pixels)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        text = dict(getattr(image, "text", {}) or {})
        size = image.size
        extra = {k: v for k, v in image.info.items() if isinstance(v, str | int | float)}
    infotext = str(text.pop("parameters", extra.pop("parameters", "")))
    items = {k: v for k, v in {**extra, **text}.items() if k != "parameters"}
    return PngInfoResponse(info=infotext, items=items, parameters=png_parameters(infotext, size))


@router.get("/progress", summary="Progress of your newest job, with a preview")
def progress(request: Request, who: Owner, skip_current_image: bool = False) -> ProgressResponse:
    runs = _jobs(request).of_owner(who)
    run = next((r for r in runs if not r.done), None)
    return _progress(run, skip_current_image)


def _progress(run: Run | None, skip_image: bool) -> ProgressResponse:
    if run is None:
        state = ProgressState(
            skipped=False,
            interrupted=False,
            job="",
            job_count=0,
            job_timestamp="0",
            job_no=0,
            sampling_step=0,
            sampling_steps=0,
        )
        return ProgressResponse(
            progress=0, eta_relative=0, state=state, current_image=None, textinfo=None
        )
    p = run.progress
    state = ProgressState(
        skipped=False,
        interrupted=False,
        job=run.request_id,
        job_count=p.job_count if p else 1,
        job_timestamp=run.created.strftime("%Y%m%d%H%M%S"),
        job_no=(p.job_no - 1) if p else 0,
        sampling_step=p.step if p else 0,
        sampling_steps=p.total_steps if p else 0,
    )
    preview = run.preview_jpeg
    return ProgressResponse(
        progress=p.progress if p else 0.0,
        eta_relative=p.eta_seconds if p else 0.0,
        state=state,
        current_image=b64(preview) if preview and not skip_image else None,
        textinfo="queued" if p is None else None,
    )


def _cancel_own(request: Request, owner: str) -> dict:
    jobs = _jobs(request)
    for run in jobs.of_owner(owner):
        if not run.done:
            jobs.cancel(owner, run.request_id)
    return {}


@router.post("/interrupt", summary="Stop your running jobs")
def interrupt(request: Request, who: Owner) -> dict:
    return _cancel_own(request, who)


@router.post("/skip", summary="Stop your running jobs (a job is one batch here)")
def skip(request: Request, who: Owner) -> dict:
    return _cancel_own(request, who)


# -- options -----------------------------------------------------------------------------


@router.get("/options", summary="Your A1111 options (checkpoint, VAE, clip skip, …)")
def get_options(request: Request, clients: Clients, who: Owner) -> dict[str, Any]:
    options = _options(request, who)
    reply = clients.generator.list_models(common_pb2.MODEL_KIND_CHECKPOINT)
    name = options.checkpoint or reply.default_checkpoint
    current = next((m for m in reply.models if m.name == name), None)
    return {
        **options.extra,
        "sd_model_checkpoint": current.title if current else name,
        "sd_checkpoint_hash": current.sha256 if current else "",
        "sd_vae": options.vae,
        "CLIP_stop_at_last_layers": options.clip_skip,
        "show_progress_every_n_steps": options.preview_every,
        "show_progress_type": options.preview_method,
        "samples_format": "png",
        "samples_save": True,
    }


@router.post("/options", summary="Set your checkpoint, VAE, clip skip, preview interval")
def set_options(body: dict[str, Any], request: Request, clients: Clients, who: Owner) -> None:
    options = _options(request, who)
    clip_skip = body.get("CLIP_stop_at_last_layers", options.clip_skip)
    every = body.get("show_progress_every_n_steps", options.preview_every)
    _check_int(clip_skip, "CLIP_stop_at_last_layers", 1, MAX_CLIP_SKIP)
    _check_int(every, "show_progress_every_n_steps", -1, MAX_STEPS)
    method = body.get("show_progress_type", options.preview_method)
    if method not in PREVIEW_METHODS:
        raise InvalidArgument("show_progress_type", f"must be one of {', '.join(PREVIEW_METHODS)}")
    checkpoint, vae = options.checkpoint, options.vae
    if body.get("sd_model_checkpoint"):
        checkpoint = _model_named(clients, body["sd_model_checkpoint"], "Model")
    if "sd_vae" in body:
        vae = str(body["sd_vae"] or "Automatic")
        vae = vae if vae in NO_VAE else _model_named(clients, vae, "VAE")
    options.checkpoint, options.vae = checkpoint, vae
    options.clip_skip, options.preview_every = clip_skip, every
    options.preview_method = method


def _check_int(value: object, name: str, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidArgument(name, f"must be an integer from {low} to {high}")


def _model_named(clients: Backends, value: object, kind: str) -> str:
    kinds = {"Model": common_pb2.MODEL_KIND_CHECKPOINT, "VAE": common_pb2.MODEL_KIND_VAE}
    found = find_model(str(value), list(clients.generator.list_models(kinds[kind]).models))
    if found is None:
        raise NotFound(kind, str(value))
    return found.name


@router.get("/cmd-flags", summary="The server's settings, as A1111 command-line flags")
def cmd_flags(request: Request) -> dict[str, Any]:
    settings = request.app.state.settings
    return {
        "api": True,
        "nowebui": False,
        "listen": settings.host not in ("127.0.0.1", "localhost"),
        "port": settings.gateway_port,
        "api_auth": "***" if settings.api_key_users() else None,
        "data_dir": str(settings.data_dir),
        "ckpt_dir": None,
        "lora_dir": None,
        "device": settings.device,
        "skip_torch_cuda_test": True,
    }


# -- listings ----------------------------------------------------------------------------


@router.get("/sd-models", summary="Checkpoints")
def sd_models(clients: Clients) -> list[SdModel]:
    reply = clients.generator.list_models(common_pb2.MODEL_KIND_CHECKPOINT)
    return [
        SdModel(
            title=m.title,
            model_name=m.name,
            hash=m.short_hash or None,
            sha256=m.sha256 or None,
            filename=m.object_key,
            config=None,
        )
        for m in reply.models
    ]


@router.get("/sd-vae", summary="VAEs")
def sd_vae(clients: Clients) -> list[SdVae]:
    reply = clients.generator.list_models(common_pb2.MODEL_KIND_VAE)
    return [SdVae(model_name=m.name, filename=m.object_key) for m in reply.models]


@router.get("/loras", summary="LoRAs with their kohya metadata")
def loras(clients: Clients) -> list[Lora]:
    reply = clients.generator.list_models(common_pb2.MODEL_KIND_LORA)
    return [
        Lora(name=m.name, alias=m.name, path=m.object_key, metadata=dict(m.metadata))
        for m in reply.models
    ]


@router.get("/samplers", summary="Samplers by A1111 name")
def samplers(clients: Clients) -> list[Sampler]:
    return [
        Sampler(name=s.name, aliases=list(s.aliases), options=dict(s.options))
        for s in clients.generator.list_samplers()
    ]


@router.get("/schedulers", summary="Schedule types")
def schedulers() -> list[Scheduler]:
    return [
        Scheduler(name=name, label=label, aliases=None, default_rho=-1, need_inner_model=False)
        for name, label in SCHEDULERS.items()
    ]


@router.get("/upscalers", summary="Upscalers")
def upscalers(clients: Clients) -> list[Upscaler]:
    return [
        Upscaler(
            name=u.name,
            model_name=u.model_name or None,
            model_path=None,
            model_url=None,
            scale=u.scale or None,
        )
        for u in clients.generator.list_upscalers()
    ]


@router.get("/latent-upscale-modes", summary="Latent upscale modes")
def latent_upscale_modes(clients: Clients) -> list[LatentUpscaleMode]:
    listed = clients.generator.list_upscalers()
    return [LatentUpscaleMode(name=u.name) for u in listed if u.name.startswith("Latent")]


@router.get("/prompt-styles", summary="Style presets as A1111 prompt styles")
def prompt_styles(clients: Clients) -> list[PromptStyle]:
    return [
        PromptStyle(
            name=s.name, prompt=s.prompt_template or "{prompt}", negative_prompt=s.negative_prompt
        )
        for s in clients.generator.list_styles()
    ]


def _refresh(clients: Backends, kind: common_pb2.ModelKind) -> None:
    clients.generator.refresh_models(kind)


@router.post("/refresh-checkpoints", summary="Rescan the store for checkpoints")
def refresh_checkpoints(clients: Clients) -> None:
    _refresh(clients, common_pb2.MODEL_KIND_CHECKPOINT)


@router.post("/refresh-vae", summary="Rescan the store for VAEs")
def refresh_vae(clients: Clients) -> None:
    _refresh(clients, common_pb2.MODEL_KIND_VAE)


@router.post("/refresh-loras", summary="Rescan the store for LoRAs")
def refresh_loras(clients: Clients) -> None:
    _refresh(clients, common_pb2.MODEL_KIND_LORA)
