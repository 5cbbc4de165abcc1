"""Typed client of the Generator service."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from services.common.clients.channel import ServiceClient
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2, generator_pb2_grpc

UPLOAD_CHUNK_BYTES = 1024 * 1024


class GeneratorClient(ServiceClient):
    SERVICE = "sdstack.v1.Generator"
    IDEMPOTENT_METHODS = (
        "WatchGeneration",
        "Cancel",
        "ListModels",
        "RefreshModels",
        "DeleteModel",
        "ListSamplers",
        "ListUpscalers",
        "ListStyles",
        "GetStyle",
        "PutStyle",
        "DeleteStyle",
    )

    def __init__(self, target: str, *, timeout: float = 30.0) -> None:
        super().__init__(target, timeout=timeout)
        self.stub = generator_pb2_grpc.GeneratorStub(self.channel)

    def generate(
        self, request: generator_pb2.GenerateRequest, *, timeout: float = 600.0
    ) -> Iterator[generator_pb2.GenerateEvent]:
        """Streams the job's events; cancelling the iterator cancels the job."""
        return self._stream(self.stub.Generate, request, timeout)

    def generate_images(
        self, request: generator_pb2.GenerateRequest, *, timeout: float = 600.0
    ) -> list[common_pb2.GeneratedImage]:
        """Runs a job to the end and returns its images."""
        for event in self.generate(request, timeout=timeout):
            if event.HasField("result"):
                return list(event.result.images)
        return []

    def watch(
        self, request_id: str, *, timeout: float = 600.0
    ) -> Iterator[generator_pb2.GenerateEvent]:
        """A running or recently finished job's events, from the first."""
        request = generator_pb2.WatchGenerationRequest(request_id=request_id)
        return self._stream(self.stub.WatchGeneration, request, timeout)

    def cancel(self, request_id: str) -> bool:
        reply = self._call(self.stub.Cancel, generator_pb2.CancelRequest(request_id=request_id))
        return reply.cancelled

    def list_models(
        self, kind: common_pb2.ModelKind = common_pb2.MODEL_KIND_UNSPECIFIED
    ) -> generator_pb2.ListModelsResponse:
        return self._call(self.stub.ListModels, generator_pb2.ListModelsRequest(kind=kind))

    def refresh_models(
        self, kind: common_pb2.ModelKind = common_pb2.MODEL_KIND_UNSPECIFIED
    ) -> generator_pb2.ListModelsResponse:
        return self._call(self.stub.RefreshModels, generator_pb2.ListModelsRequest(kind=kind))

    def list_samplers(self) -> list[common_pb2.SamplerInfo]:
        reply = self._call(self.stub.ListSamplers, generator_pb2.ListSamplersRequest())
        return list(reply.samplers)

    def list_upscalers(self) -> list[generator_pb2.UpscalerInfo]:
        reply = self._call(self.stub.ListUpscalers, generator_pb2.ListUpscalersRequest())
        return list(reply.upscalers)

    def list_styles(self) -> list[generator_pb2.Style]:
        reply = self._call(self.stub.ListStyles, generator_pb2.ListStylesRequest())
        return list(reply.styles)

    def get_style(self, name: str) -> generator_pb2.Style:
        return self._call(self.stub.GetStyle, generator_pb2.GetStyleRequest(name=name))

    def put_style(self, style: generator_pb2.Style) -> generator_pb2.Style:
        return self._call(self.stub.PutStyle, generator_pb2.PutStyleRequest(style=style))

    def delete_style(self, name: str) -> bool:
        reply = self._call(self.stub.DeleteStyle, generator_pb2.DeleteStyleRequest(name=name))
        return reply.deleted

    def import_model(
        self,
        path: Path,
        *,
        name: str,
        kind: common_pb2.ModelKind,
        file_format: str,
        overwrite: bool = False,
        sha256: str = "",
        on_chunk: Callable[[int], object] | None = None,
        timeout: float = 3600.0,
    ) -> common_pb2.ModelInfo:
        """Uploads a local model file in chunks; `on_chunk(n)` follows the progress."""
        header = generator_pb2.ImportModelHeader(
            name=name, kind=kind, format=file_format, overwrite=overwrite, sha256=sha256
        )

        def parts() -> Iterator[generator_pb2.ImportModelRequest]:
            yield generator_pb2.ImportModelRequest(header=header)
            with path.open("rb") as file:
                while chunk := file.read(UPLOAD_CHUNK_BYTES):
                    if on_chunk is not None:
                        on_chunk(len(chunk))
                    yield generator_pb2.ImportModelRequest(chunk=common_pb2.FileChunk(data=chunk))

        return self._call(self.stub.ImportModel, parts(), timeout)
