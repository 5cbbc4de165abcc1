"""Generator gRPC servicer: translates protobuf to engine calls and engine events back."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
from google.protobuf import duration_pb2, json_format, timestamp_pb2

from services.common.errors import FieldViolation, InvalidArgument, NotFound
from services.common.generation import LoraUse
from services.common.generation.proto import settings_to_proto
from services.common.images import decode_image
from services.common.object_store import LORAS_BUCKET
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from services.common.sd.model_registry import (
    ModelRegistry,
    StoredModel,
    Validator,
    check_kind,
    check_model_name,
)
from services.generator.engine import Engine, Event, Failed, Finished, JobHandle, Progress, Queued
from services.generator.jobs import ImageResolver, job_from_request
from services.generator.renderer import BUILTIN_UPSCALERS, RenderedImage
from services.generator.samplers import SAMPLERS
from services.generator.upscalers import read_native_scale


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(max(seconds, 0.0) * 1e9))
    return value


def model_info(model: StoredModel, metadata: dict[str, str] | None = None) -> common_pb2.ModelInfo:
    info = common_pb2.ModelInfo(
        name=model.name,
        kind=model.kind,
        object_key=model.key,
        sha256=model.sha256,
        short_hash=model.short_hash,
        size_bytes=model.size_bytes,
        architecture="sd1" if model.kind == common_pb2.MODEL_KIND_CHECKPOINT else "",
        format=model.format,
        title=model.title,
        metadata=metadata or {},
    )
    if model.created_at is not None:
        info.created_at.CopyFrom(timestamp_pb2.Timestamp(seconds=int(model.created_at.timestamp())))
    return info


def event_message(request_id: str, event: Event) -> generator_pb2.GenerateEvent:
    message = generator_pb2.GenerateEvent(request_id=request_id)
    if isinstance(event, Queued):
        message.queued.CopyFrom(
            generator_pb2.QueuedEvent(position=event.position, queue_depth=event.depth)
        )
    elif isinstance(event, Progress):
        message.progress.CopyFrom(
            common_pb2.ProgressEvent(
                step=event.step,
                total_steps=event.total_steps,
                job_no=1,
                job_count=1,
                progress=event.step / event.total_steps,
                eta=_duration(event.eta_seconds),
                preview_jpeg=event.preview_jpeg,
            )
        )
    elif isinstance(event, Finished):
        message.result.CopyFrom(
            generator_pb2.GenerationResult(
                images=[_image(image, event) for image in event.images],
                elapsed=_duration(event.elapsed_seconds),
            )
        )
    return message


def _image(image: RenderedImage, finished: Finished) -> common_pb2.GeneratedImage:
    return common_pb2.GeneratedImage(
        png=image.png,
        seed=image.seed,
        subseed=image.subseed,
        subseed_strength=image.subseed_strength,
        width=image.width,
        height=image.height,
        infotext=image.infotext,
        index=image.index,
        params=_used_params(finished, image),
        model_sha256=finished.model.sha256,
        vae_sha256=image.vae.sha256 if image.vae else "",
    )


def _used_params(finished: Finished, image: RenderedImage) -> common_pb2.GenerationParams:
    """The settings that made `image`, resolved: its own seeds, the checkpoint, VAE and
    LoRAs by name with their hashes, and the prompt as encoded (its `<lora:…>` tags are in
    `loras`), so that sent back they make the same image."""
    job = finished.job
    loras = [
        LoraUse(name=lora.name, weight=unet, text_encoder_weight=te, short_hash=lora.short_hash)
        for lora, unet, te in image.loras
    ]
    used = job.settings.model_copy(
        update={
            "prompt": job.prompt,
            "model": finished.model.name,
            "vae": image.vae.name if image.vae else "",
            "loras": loras,
            "seed": image.seed,
            "subseed": image.subseed,
        }
    )
    return settings_to_proto(used)


class GeneratorServicer(generator_pb2_grpc.GeneratorServicer):
    def __init__(
        self,
        engine: Engine,
        registry: ModelRegistry,
        *,
        max_pixels: int,
        default_checkpoint: str,
        validate_model: Validator,
        resolve_image: ImageResolver,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.max_pixels = max_pixels
        self.default_checkpoint = default_checkpoint
        self.validate_model = validate_model
        self.resolve_image = resolve_image
        self._upscaler_scales: dict[str, int] = {}  # by sha256; see _upscaler_scale

    def Generate(
        self, request: generator_pb2.GenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[generator_pb2.GenerateEvent]:
        job = job_from_request(request, self.max_pixels, self.resolve_image)
        model = (
            self.registry.find(common_pb2.MODEL_KIND_CHECKPOINT, job.settings.model)
            if job.settings.model
            else self.engine.default_checkpoint(self.default_checkpoint)
        )
        handle = self.engine.submit(job, model)
        context.add_callback(lambda: self.engine.cancel(job.request_id))
        yield from self._stream(handle)

    def WatchGeneration(
        self, request: generator_pb2.WatchGenerationRequest, context: grpc.ServicerContext
    ) -> Iterator[generator_pb2.GenerateEvent]:
        handle = self.engine.find(request.request_id)
        if handle is None:
            raise NotFound("generation", request.request_id)
        yield from self._stream(handle)

    def _stream(self, handle: JobHandle) -> Iterator[generator_pb2.GenerateEvent]:
        for event in handle.stream():
            if isinstance(event, Failed):
                raise event.error
            yield event_message(handle.job.request_id, event)

    def Cancel(
        self, request: generator_pb2.CancelRequest, context: grpc.ServicerContext
    ) -> generator_pb2.CancelResponse:
        return generator_pb2.CancelResponse(cancelled=self.engine.cancel(request.request_id))

    def ListModels(
        self, request: generator_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> generator_pb2.ListModelsResponse:
        kinds = [check_kind(request.kind)] if request.kind else None
        models = self.registry.list(kinds)
        checkpoints = [m for m in models if m.kind == common_pb2.MODEL_KIND_CHECKPOINT]
        default = self.default_checkpoint or (checkpoints[0].name if checkpoints else "")
        return generator_pb2.ListModelsResponse(
            models=[model_info(m, self._listed_metadata(m)) for m in models],
            default_checkpoint=default,
        )

    def _listed_metadata(self, model: StoredModel) -> dict[str, str] | None:
        """LoRAs are listed with their `ss_*` metadata (A1111's `/sdapi/v1/loras` shows it)."""
        if model.kind != common_pb2.MODEL_KIND_LORA:
            return None
        return self.registry.file_metadata(model)

    RefreshModels = ListModels  # the store is read on every listing

    def ImportModel(
        self,
        request_iterator: Iterator[generator_pb2.ImportModelRequest],
        context: grpc.ServicerContext,
    ) -> common_pb2.ModelInfo:
        first = next(request_iterator, None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument("header", "the first message must be the header")
        header = first.header
        chunks = (part.chunk.data for part in request_iterator if part.HasField("chunk"))
        model = self.registry.import_stream(
            chunks,
            name=header.name,
            kind=header.kind,
            file_format=header.format,
            overwrite=header.overwrite,
            validate=self.validate_model,
        )
        if header.sha256 and header.sha256.lower() != model.sha256:
            self.registry.delete(model.kind, model.name)
            raise InvalidArgument("header.sha256", "does not match the uploaded file")
        return model_info(model, self._listed_metadata(model))

    def DeleteModel(
        self, request: generator_pb2.DeleteModelRequest, context: grpc.ServicerContext
    ) -> generator_pb2.DeleteModelResponse:
        deleted = self.registry.delete(request.kind, request.name)
        return generator_pb2.DeleteModelResponse(deleted=deleted)

    def ListSamplers(
        self, request: generator_pb2.ListSamplersRequest, context: grpc.ServicerContext
    ) -> generator_pb2.ListSamplersResponse:
        return generator_pb2.ListSamplersResponse(
            samplers=[
                common_pb2.SamplerInfo(
                    name=s.name,
                    aliases=list(s.aliases),
                    options={"scheduler": s.scheduler.__name__}
                    | {k: str(v) for k, v in s.options.items()},
                )
                for s in SAMPLERS.values()
            ]
        )

    def ListUpscalers(
        self, request: generator_pb2.ListUpscalersRequest, context: grpc.ServicerContext
    ) -> generator_pb2.ListUpscalersResponse:
        models = self.registry.list([common_pb2.MODEL_KIND_UPSCALER])
        return generator_pb2.ListUpscalersResponse(
            upscalers=[
                *(generator_pb2.UpscalerInfo(name=name) for name in BUILTIN_UPSCALERS),
                *(
                    generator_pb2.UpscalerInfo(
                        name=m.name, model_name=m.name, scale=self._upscaler_scale(m)
                    )
                    for m in models
                ),
            ]
        )

    def _upscaler_scale(self, model: StoredModel) -> int:
        """A model's native scale, read from its tensors' shapes (not its weights) once per
        sha256; 0 (listed as "any") for a file that is no readable ESRGAN-family model."""
        if model.sha256 not in self._upscaler_scales:
            with tempfile.TemporaryDirectory(prefix="sdstack-upscaler-") as folder:
                path = Path(folder) / f"model.{model.format}"
                try:
                    self.registry.store.download(model.bucket, model.key, path)
                except NotFound:  # deleted since it was listed
                    return 0
                try:
                    scale = read_native_scale(path)
                except InvalidArgument:
                    scale = 0
            self._upscaler_scales[model.sha256] = scale
        return self._upscaler_scales[model.sha256]

    # -- style presets: `styles/<name>.json` in the `loras` bucket (see the Style message) --

    def ListStyles(
        self, request: generator_pb2.ListStylesRequest, context: grpc.ServicerContext
    ) -> generator_pb2.ListStylesResponse:
        styles = []
        for entry in self.registry.store.list(LORAS_BUCKET, prefix=STYLES_PREFIX):
            if entry.key.endswith(".json"):
                style = self._read_style(entry.key)
                style.ClearField("preview")
                styles.append(style)
        return generator_pb2.ListStylesResponse(styles=sorted(styles, key=lambda s: s.name))

    def GetStyle(
        self, request: generator_pb2.GetStyleRequest, context: grpc.ServicerContext
    ) -> generator_pb2.Style:
        return self._read_style(_style_key(request.name))

    def PutStyle(
        self, request: generator_pb2.PutStyleRequest, context: grpc.ServicerContext
    ) -> generator_pb2.Style:
        style = generator_pb2.Style()
        style.CopyFrom(request.style)
        _check_style(style, self.max_pixels)
        if style.lora:
            self.registry.find(common_pb2.MODEL_KIND_LORA, style.lora)
        style.has_preview = bool(style.preview)
        style.updated_at.GetCurrentTime()
        text = json_format.MessageToJson(style, preserving_proto_field_name=True)
        self.registry.store.put(
            LORAS_BUCKET, _style_key(style.name), text.encode(), content_type="application/json"
        )
        return style

    def DeleteStyle(
        self, request: generator_pb2.DeleteStyleRequest, context: grpc.ServicerContext
    ) -> generator_pb2.DeleteStyleResponse:
        key = _style_key(request.name)
        if not self.registry.store.exists(LORAS_BUCKET, key):
            return generator_pb2.DeleteStyleResponse(deleted=False)
        self.registry.store.delete(LORAS_BUCKET, key)
        return generator_pb2.DeleteStyleResponse(deleted=True)

    def _read_style(self, key: str) -> generator_pb2.Style:
        try:
            data = self.registry.store.get_bytes(LORAS_BUCKET, key)
        except NotFound:
            name = key.removeprefix(STYLES_PREFIX).removesuffix(".json")
            raise NotFound("style", name) from None
        return json_format.Parse(data, generator_pb2.Style(), ignore_unknown_fields=True)


STYLES_PREFIX = "styles/"
MAX_STYLE_PREVIEW_BYTES = 1024 * 1024
MAX_STYLE_TEXT = 2000


def _style_key(name: str) -> str:
    return f"{STYLES_PREFIX}{check_model_name(name)}.json"


def _check_style(style: generator_pb2.Style, max_pixels: int) -> None:
    """Every broken rule of a style preset, at once (the preview is decoded to be sure)."""
    check_model_name(style.name, "style.name")
    rules = [
        (len(style.title) <= 100, "style.title", "at most 100 characters"),
        (len(style.category) <= 64, "style.category", "at most 64 characters"),
        (
            not style.HasField("weight") or -4 <= style.weight <= 4,
            "style.weight",
            "must be between -4 and 4",
        ),
        (len(style.trigger_words) <= 32, "style.trigger_words", "at most 32 words"),
        (
            all(0 < len(w) <= 64 for w in style.trigger_words),
            "style.trigger_words",
            "each 1 to 64 characters",
        ),
        (len(style.prompt_template) <= MAX_STYLE_TEXT, "style.prompt_template", "≤ 2000 chars"),
        (len(style.negative_prompt) <= MAX_STYLE_TEXT, "style.negative_prompt", "≤ 2000 chars"),
        (len(style.preview) <= MAX_STYLE_PREVIEW_BYTES, "style.preview", "at most 1 MiB"),
    ]
    broken = [FieldViolation(field, rule) for ok, field, rule in rules if not ok]
    if broken:
        raise InvalidArgument.many(broken)
    if style.lora:
        check_model_name(style.lora, "style.lora")
    if style.preview:
        decode_image(style.preview, "style.preview", max_pixels=max_pixels)
