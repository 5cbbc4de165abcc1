"""Generator gRPC servicer: translates protobuf to engine calls and engine events back."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from services.common.errors import InvalidArgument, NotFound
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from services.generator.engine import Engine, Event, Failed, Finished, JobHandle, Progress, Queued
from services.generator.jobs import ImageResolver, job_from_request
from services.generator.model_registry import ModelRegistry, StoredModel, Validator
from services.generator.renderer import RenderedImage
from services.generator.samplers import SAMPLERS


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(max(seconds, 0.0) * 1e9))
    return value


def model_info(model: StoredModel) -> common_pb2.ModelInfo:
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
        model_sha256=finished.model.sha256,
    )


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

    def Generate(
        self, request: generator_pb2.GenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[generator_pb2.GenerateEvent]:
        job = job_from_request(request, self.max_pixels, self.resolve_image)
        model = (
            self.registry.find(common_pb2.MODEL_KIND_CHECKPOINT, job.params.model)
            if job.params.model
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
        kinds = [request.kind] if request.kind else None
        models = self.registry.list(kinds)
        checkpoints = [m for m in models if m.kind == common_pb2.MODEL_KIND_CHECKPOINT]
        default = self.default_checkpoint or (checkpoints[0].name if checkpoints else "")
        return generator_pb2.ListModelsResponse(
            models=[model_info(m) for m in models], default_checkpoint=default
        )

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
        return model_info(model)

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
                generator_pb2.UpscalerInfo(name="Lanczos"),
                generator_pb2.UpscalerInfo(name="Latent"),
                *(generator_pb2.UpscalerInfo(name=m.name, model_name=m.name) for m in models),
            ]
        )
