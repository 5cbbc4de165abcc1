"""Models: `GET /v1/models`, `POST /v1/models` (upload), `/v1/loras`, `/v1/samplers`,
`/v1/upscalers`. The generator owns the model store; the gateway only relays."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, Field

from gateway.backends import Clients
from gateway.errors import ERROR_RESPONSES
from services.common.errors import InvalidArgument
from services.common.generation.settings import NAME_PATTERN
from services.common.proto.sdstack.v1 import common_pb2
from services.common.sd.model_registry import KINDS

router = APIRouter(prefix="/v1", tags=["models"], responses=ERROR_RESPONSES)

Kind = Literal["checkpoint", "vae", "lora", "upscaler", "tagger", "vae_approx"]
KIND_NAMES = {value: name for name, value in KINDS.items()}


class ModelOut(BaseModel):
    name: str
    kind: str
    title: str = Field(description="A1111 title: `name.ext [shorthash]`.")
    sha256: str
    short_hash: str
    size_bytes: int
    format: str
    architecture: str
    object_key: str
    metadata: dict[str, str] = Field(description="Header metadata (LoRAs: kohya `ss_*`).")
    created_at: datetime | None

    @classmethod
    def from_message(cls, model: common_pb2.ModelInfo) -> ModelOut:
        return cls(
            name=model.name,
            kind=KIND_NAMES.get(model.kind, "unknown"),
            title=model.title,
            sha256=model.sha256,
            short_hash=model.short_hash,
            size_bytes=model.size_bytes,
            format=model.format,
            architecture=model.architecture,
            object_key=model.object_key,
            metadata=dict(model.metadata),
            created_at=model.created_at.ToDatetime(tzinfo=UTC)
            if model.HasField("created_at")
            else None,
        )


def _utc(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


class ModelsOut(BaseModel):
    models: list[ModelOut]
    default_checkpoint: str


class SamplerOut(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class UpscalerOut(BaseModel):
    name: str
    model_name: str | None
    scale: float | None = Field(description="Native scale of a model; null for any.")


@router.get("/models", summary="Models in the store (every kind, or one)")
def list_models(clients: Clients, kind: Kind | None = None) -> ModelsOut:
    reply = clients.generator.list_models(KINDS[kind] if kind else 0)
    return ModelsOut(
        models=[ModelOut.from_message(m) for m in reply.models],
        default_checkpoint=reply.default_checkpoint,
    )


@router.post(
    "/models",
    summary="Upload a model file (the request body is the file)",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def upload_model(
    request: Request,
    clients: Clients,
    name: Annotated[str, Query(pattern=NAME_PATTERN, description="Name without extension.")],
    kind: Kind,
    format: Annotated[
        Literal["safetensors", "ckpt", "pt", "pth", "onnx", "diffusers"],
        Query(description="File format; `diffusers` is a zip of a diffusers folder."),
    ],
    overwrite: bool = False,
    sha256: Annotated[str, Query(pattern=r"^([0-9a-fA-F]{64})?$")] = "",
) -> ModelOut:
    limit = request.app.state.settings.max_upload_bytes
    with tempfile.TemporaryDirectory(prefix="sdstack-upload-") as folder:
        path = Path(folder) / "upload"
        size = 0
        with path.open("wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"body: the file must be at most {limit} bytes")
                out.write(chunk)
        if size == 0:
            raise InvalidArgument("body", "the file is empty")
        model = await run_in_threadpool(
            clients.generator.import_model,
            path,
            name=name,
            kind=KINDS[kind],
            file_format=format,
            overwrite=overwrite,
            sha256=sha256.lower(),
        )
    return ModelOut.from_message(model)


@router.get("/loras", summary="LoRAs in the store, with their kohya metadata")
def list_loras(clients: Clients) -> list[ModelOut]:
    reply = clients.generator.list_models(common_pb2.MODEL_KIND_LORA)
    return [ModelOut.from_message(m) for m in reply.models]


@router.get("/samplers", summary="A1111 sampler names the generator accepts")
def list_samplers(clients: Clients) -> list[SamplerOut]:
    return [
        SamplerOut(name=s.name, aliases=list(s.aliases), options=dict(s.options))
        for s in clients.generator.list_samplers()
    ]


@router.get(
    "/upscalers", summary="Upscalers: built-in (Lanczos, Nearest, the Latent modes) and model files"
)
def list_upscalers(clients: Clients) -> list[UpscalerOut]:
    return [
        UpscalerOut(name=u.name, model_name=u.model_name or None, scale=u.scale or None)
        for u in clients.generator.list_upscalers()
    ]
