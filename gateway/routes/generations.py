"""Image generation: `POST /v1/generations` (gateway → generator → gallery)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from gateway.backends import Clients, Owner
from gateway.routes.images import ImageOut
from services.common.proto.sdstack.v1 import common_pb2, gallery_pb2, generator_pb2
from services.common.request_context import current_request_id

router = APIRouter(prefix="/v1/generations", tags=["generations"])


class GenerationCreate(BaseModel):
    """A text-to-image request. Defaults follow the A1111 web UI."""

    prompt: str = Field("", max_length=20_000)
    negative_prompt: str = Field("", max_length=20_000)
    model: str = Field("", max_length=128, description="Checkpoint name; default: the default.")
    sampler: str = Field("Euler a", max_length=64, description="A1111 sampler name.")
    schedule_type: str = Field("Automatic", max_length=32)
    steps: int = Field(20, ge=1, le=150)
    cfg_scale: float = Field(7.0, ge=0, le=30, allow_inf_nan=False)
    width: int = Field(512, ge=64, le=2048, multiple_of=8)
    height: int = Field(512, ge=64, le=2048, multiple_of=8)
    seed: int = Field(-1, ge=-1, le=4_294_967_294, description="-1 draws a random seed.")
    batch_size: int = Field(1, ge=1, le=8)
    n_iter: int = Field(1, ge=1, le=16)
    clip_skip: int = Field(1, ge=1, le=12)

    model_config = {"extra": "forbid"}

    def to_params(self) -> common_pb2.GenerationParams:
        return common_pb2.GenerationParams(**self.model_dump())


class GenerationOut(BaseModel):
    request_id: str
    images: list[ImageOut]


@router.post("", summary="Make images and store them in the gallery")
def create_generation(body: GenerationCreate, clients: Clients, who: Owner) -> GenerationOut:
    request_id = current_request_id()
    params = body.to_params()
    request = generator_pb2.GenerateRequest(
        request_id=request_id,
        mode=generator_pb2.GENERATION_MODE_TXT2IMG,
        params=params,
        owner=who,
    )
    generated = clients.generator.generate_images(request)
    stored = [
        clients.gallery.create_image(
            gallery_pb2.CreateImageRequest(
                owner=who,
                request_id=request_id,
                png=image.png,
                params=_used_params(params, image),
            )
        )
        for image in generated
    ]
    return GenerationOut(request_id=request_id, images=[ImageOut.from_message(i) for i in stored])


def _used_params(
    params: common_pb2.GenerationParams, image: common_pb2.GeneratedImage
) -> common_pb2.GenerationParams:
    used = common_pb2.GenerationParams()
    used.CopyFrom(params)
    used.seed = image.seed
    return used
