"""Gallery images: `/v1/images/...`."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from gateway.backends import Backends, Clients, Owner
from services.common.proto.sdstack.v1 import gallery_pb2

router = APIRouter(prefix="/v1/images", tags=["images"])


class ImageOut(BaseModel):
    id: str
    created_at: datetime
    url: str
    thumbnail_url: str
    width: int
    height: int
    prompt: str
    negative_prompt: str
    seed: int
    sampler: str
    steps: int
    cfg_scale: float
    model: str
    model_hash: str
    parent_image_id: str | None
    tags: list[str]
    favourite: bool
    infotext: str
    request_id: str
    sha256: str

    @classmethod
    def from_message(cls, image: gallery_pb2.Image) -> ImageOut:
        return cls(
            id=image.id,
            created_at=image.created_at.ToDatetime(),
            url=f"/v1/images/{image.id}/file",
            thumbnail_url=f"/v1/images/{image.id}/thumbnail",
            width=image.width,
            height=image.height,
            prompt=image.prompt,
            negative_prompt=image.negative_prompt,
            seed=image.seed,
            sampler=image.sampler,
            steps=image.steps,
            cfg_scale=round(image.cfg_scale, 4),
            model=image.model,
            model_hash=image.model_hash,
            parent_image_id=image.parent_image_id or None,
            tags=list(image.tags),
            favourite=image.favourite,
            infotext=image.infotext,
            request_id=image.request_id,
            sha256=image.sha256,
        )


@router.get("/{image_id}", summary="One image's record")
def get_image(image_id: str, clients: Clients, who: Owner) -> ImageOut:
    return ImageOut.from_message(clients.gallery.get_image(who, image_id))


def _file_response(
    clients: Backends, who: str, image_id: str, variant: gallery_pb2.FileVariant
) -> StreamingResponse:
    content_type, chunks = clients.gallery.image_file(who, image_id, variant)
    return StreamingResponse(
        chunks, media_type=content_type, headers={"Cache-Control": "private, max-age=3600"}
    )


@router.get("/{image_id}/file", summary="The PNG, with its A1111 parameters chunk")
def get_image_file(image_id: str, clients: Clients, who: Owner) -> StreamingResponse:
    return _file_response(clients, who, image_id, gallery_pb2.FILE_VARIANT_ORIGINAL)


@router.get("/{image_id}/thumbnail", summary="A WebP thumbnail (longest side 256)")
def get_image_thumbnail(image_id: str, clients: Clients, who: Owner) -> StreamingResponse:
    return _file_response(clients, who, image_id, gallery_pb2.FILE_VARIANT_THUMBNAIL)
