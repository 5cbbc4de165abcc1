"""Gallery images: `/v1/images/...` (the caller's own images only)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse
from google.protobuf import timestamp_pb2
from pydantic import BaseModel, Field

from gateway.backends import Backends, Clients, Owner
from gateway.generation_body import GenerationCreate
from services.common.errors import InvalidArgument
from services.common.generation.proto import request_from_proto
from services.common.proto.sdstack.v1 import gallery_pb2

router = APIRouter(prefix="/v1/images", tags=["images"])

ID_PATTERN = r"^[0-9a-f]{32}$"
ImageId = Annotated[str, Field(pattern=ID_PATTERN, description="32 hex characters")]
ImageIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="32 hex characters")]
Variant = Literal["original", "thumbnail"]
VARIANTS: dict[str, gallery_pb2.FileVariant] = {
    "original": gallery_pb2.FILE_VARIANT_ORIGINAL,
    "thumbnail": gallery_pb2.FILE_VARIANT_THUMBNAIL,
}


class LoraOut(BaseModel):
    name: str
    weight: float
    hash: str


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
    vae: str
    loras: list[LoraOut]
    parent_image_id: str | None
    tags: list[str]
    favourite: bool
    board_ids: list[str]
    infotext: str
    request_id: str
    sha256: str
    size_bytes: int
    params: GenerationCreate = Field(
        description="The body that makes this image again with POST /v1/generations "
        "(its source by gallery id; an inpainting mask is not kept)."
    )

    @classmethod
    def from_message(cls, image: gallery_pb2.Image) -> ImageOut:
        return cls(
            id=image.id,
            created_at=image.created_at.ToDatetime(tzinfo=UTC),
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
            vae=image.vae,
            loras=[
                LoraOut(name=lora.name, weight=round(lora.weight, 4), hash=lora.short_hash)
                for lora in image.loras
            ],
            parent_image_id=image.parent_image_id or None,
            tags=list(image.tags),
            favourite=image.favourite,
            board_ids=list(image.board_ids),
            infotext=image.infotext,
            request_id=image.request_id,
            sha256=image.sha256,
            size_bytes=image.size_bytes,
            params=GenerationCreate.from_request(request_from_proto(image.generation)),
        )


class ImagePage(BaseModel):
    images: list[ImageOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null last.")


class ImageUpdate(BaseModel):
    """What to change; fields left out stay as they are. Lists replace the old ones."""

    favourite: bool | None = None
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, max_length=64
    )
    board_ids: list[ImageId] | None = Field(None, max_length=1000)

    model_config = {"extra": "forbid"}


class Lineage(BaseModel):
    ancestors: list[ImageOut] = Field(description="Nearest first.")
    descendants: list[ImageOut] = Field(description="Nearest first.")


class ImageUrl(BaseModel):
    url: str = Field(description="Presigned URL of the object store; works until expires_at.")
    expires_at: datetime


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    return stamp


@router.get("", summary="The caller's images, newest first, filtered and paginated")
def list_images(
    clients: Clients,
    who: Owner,
    q: Annotated[str, Query(max_length=500, description="Full-text search on prompts")] = "",
    model: Annotated[str, Query(max_length=255, description="Checkpoint name or hash")] = "",
    lora: Annotated[str, Query(max_length=255)] = "",
    tag: Annotated[str, Query(max_length=64)] = "",
    board_id: Annotated[str, Query(pattern=ID_PATTERN)] = "",
    favourite: bool | None = None,
    created_after: Annotated[datetime | None, Query(description="Inclusive, ISO 8601")] = None,
    created_before: Annotated[datetime | None, Query(description="Exclusive, ISO 8601")] = None,
    cursor: Annotated[str, Query(max_length=512)] = "",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ImagePage:
    image_filter = gallery_pb2.ImageFilter(
        query=q, model=model, lora=lora, tag=tag, board_id=board_id, favourite=favourite
    )
    if created_after is not None:
        image_filter.created_after.CopyFrom(_stamp(created_after))
    if created_before is not None:
        image_filter.created_before.CopyFrom(_stamp(created_before))
    page = clients.gallery.list_images(
        gallery_pb2.ListImagesRequest(owner=who, filter=image_filter, cursor=cursor, limit=limit)
    )
    return ImagePage(
        images=[ImageOut.from_message(image) for image in page.images],
        next_cursor=page.next_cursor or None,
    )


@router.get("/{image_id}", summary="One image's record")
def get_image(image_id: ImageIdPath, clients: Clients, who: Owner) -> ImageOut:
    return ImageOut.from_message(clients.gallery.get_image(who, image_id))


@router.patch("/{image_id}", summary="Change favourite, tags or boards")
def update_image(
    image_id: ImageIdPath, body: ImageUpdate, clients: Clients, who: Owner
) -> ImageOut:
    if body.favourite is None and body.tags is None and body.board_ids is None:
        raise InvalidArgument("body", "give at least one of favourite, tags, board_ids")
    image = clients.gallery.update_image(
        who, image_id, favourite=body.favourite, tags=body.tags, board_ids=body.board_ids
    )
    return ImageOut.from_message(image)


@router.delete("/{image_id}", status_code=204, summary="Delete the image (children stay)")
def delete_image(image_id: ImageIdPath, clients: Clients, who: Owner) -> Response:
    clients.gallery.delete_image(who, image_id)
    return Response(status_code=204)


@router.get("/{image_id}/lineage", summary="What the image came from and what came from it")
def get_lineage(image_id: ImageIdPath, clients: Clients, who: Owner) -> Lineage:
    reply = clients.gallery.lineage(who, image_id)
    return Lineage(
        ancestors=[ImageOut.from_message(i) for i in reply.ancestors],
        descendants=[ImageOut.from_message(i) for i in reply.descendants],
    )


@router.get("/{image_id}/url", summary="An expiring direct URL of the file in the object store")
def get_image_url(
    image_id: ImageIdPath,
    clients: Clients,
    who: Owner,
    variant: Variant = "original",
    expires_in: Annotated[int, Query(ge=1, le=7 * 24 * 3600, description="Seconds")] = 3600,
) -> ImageUrl:
    reply = clients.gallery.get_image_url(
        who, image_id, VARIANTS[variant], timedelta(seconds=expires_in)
    )
    return ImageUrl(url=reply.url, expires_at=reply.expires_at.ToDatetime(tzinfo=UTC))


def _file_response(
    clients: Backends, who: str, image_id: str, variant: gallery_pb2.FileVariant
) -> StreamingResponse:
    content_type, chunks = clients.gallery.image_file(who, image_id, variant)
    return StreamingResponse(
        chunks, media_type=content_type, headers={"Cache-Control": "private, max-age=3600"}
    )


@router.get("/{image_id}/file", summary="The PNG, with its A1111 parameters chunk")
def get_image_file(image_id: ImageIdPath, clients: Clients, who: Owner) -> StreamingResponse:
    return _file_response(clients, who, image_id, gallery_pb2.FILE_VARIANT_ORIGINAL)


@router.get("/{image_id}/thumbnail", summary="A WebP thumbnail (longest side 256)")
def get_image_thumbnail(image_id: ImageIdPath, clients: Clients, who: Owner) -> StreamingResponse:
    return _file_response(clients, who, image_id, gallery_pb2.FILE_VARIANT_THUMBNAIL)
