"""Gallery gRPC servicer: translates protobuf to the `Images` facade and back."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from google.protobuf import timestamp_pb2

from services.common.proto.sdstack.v1 import common_pb2, gallery_pb2, gallery_pb2_grpc
from services.gallery.images import Images, ImageSettings
from services.gallery.records import ImageRow, LoraUse

FILE_CHUNK_BYTES = 512 * 1024
DEFAULT_PAGE = 50


def image_message(row: ImageRow) -> gallery_pb2.Image:
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(row.created_at)
    return gallery_pb2.Image(
        id=row.id,
        owner=row.owner,
        created_at=created,
        request_id=row.request_id,
        width=row.width,
        height=row.height,
        prompt=row.prompt,
        negative_prompt=row.negative_prompt,
        seed=row.seed,
        sampler=row.sampler,
        steps=row.steps,
        cfg_scale=row.cfg_scale,
        model=row.model_name,
        model_hash=row.model_hash,
        vae=row.vae_name or "",
        loras=[
            common_pb2.LoraRef(name=lora.name, weight=lora.weight, short_hash=lora.hash)
            for lora in row.loras
        ],
        parent_image_id=row.parent_id or "",
        tags=list(row.tags),
        favourite=row.favourite,
        board_ids=list(row.board_ids),
        infotext=row.infotext,
        sha256=row.sha256,
    )


def _settings(request: gallery_pb2.CreateImageRequest) -> ImageSettings:
    if not request.HasField("params"):
        return ImageSettings(model_hash=request.model_hash or None)
    p = request.params
    return ImageSettings(
        prompt=p.prompt or None,
        negative_prompt=p.negative_prompt or None,
        seed=p.seed if p.HasField("seed") else None,
        sampler=p.sampler or None,
        steps=p.steps or None,
        cfg_scale=p.cfg_scale if p.HasField("cfg_scale") else None,
        model_name=p.model or None,
        model_hash=request.model_hash or None,
        loras=tuple(
            LoraUse(name=lora.name, weight=lora.weight if lora.HasField("weight") else 1.0)
            for lora in p.loras
        ),
    )


class GalleryServicer(gallery_pb2_grpc.GalleryServicer):
    def __init__(self, images: Images) -> None:
        self.images = images

    def CreateImage(
        self, request: gallery_pb2.CreateImageRequest, context: grpc.ServicerContext
    ) -> gallery_pb2.Image:
        row = self.images.create(
            request.owner,
            request.png,
            _settings(request),
            request_id=request.request_id,
            parent_id=request.parent_image_id or None,
            tags=tuple(request.tags),
        )
        return image_message(row)

    def GetImage(
        self, request: gallery_pb2.GetImageRequest, context: grpc.ServicerContext
    ) -> gallery_pb2.Image:
        return image_message(self.images.get(request.owner, request.image_id))

    def ListImages(
        self, request: gallery_pb2.ListImagesRequest, context: grpc.ServicerContext
    ) -> gallery_pb2.ListImagesResponse:
        f = request.filter
        page = self.images.list(
            request.owner,
            cursor=request.cursor or None,
            limit=request.limit or DEFAULT_PAGE,
            model=f.model or None,
            lora=f.lora or None,
            tag=f.tag or None,
            favourite=f.favourite if f.HasField("favourite") else None,
            board_id=f.board_id or None,
            created_after=f.created_after.ToDatetime() if f.HasField("created_after") else None,
            created_before=f.created_before.ToDatetime() if f.HasField("created_before") else None,
            search=f.query or None,
        )
        return gallery_pb2.ListImagesResponse(
            images=[image_message(row) for row in page.items], next_cursor=page.next_cursor or ""
        )

    def GetImageFile(
        self, request: gallery_pb2.GetImageFileRequest, context: grpc.ServicerContext
    ) -> Iterator[common_pb2.FileChunk]:
        thumbnail = request.variant == gallery_pb2.FILE_VARIANT_THUMBNAIL
        content_type, chunks = self.images.file(
            request.owner, request.image_id, thumbnail=thumbnail
        )
        first = True
        for chunk in chunks:
            for start in range(0, len(chunk), FILE_CHUNK_BYTES):
                piece = chunk[start : start + FILE_CHUNK_BYTES]
                yield common_pb2.FileChunk(data=piece, content_type=content_type if first else "")
                first = False

    def DeleteImage(
        self, request: gallery_pb2.DeleteImageRequest, context: grpc.ServicerContext
    ) -> gallery_pb2.DeleteImageResponse:
        self.images.delete(request.owner, request.image_id)
        return gallery_pb2.DeleteImageResponse()

    def GetLineage(
        self, request: gallery_pb2.GetLineageRequest, context: grpc.ServicerContext
    ) -> gallery_pb2.GetLineageResponse:
        ancestors, descendants = self.images.lineage(request.owner, request.image_id)
        return gallery_pb2.GetLineageResponse(
            ancestors=[image_message(r) for r in ancestors],
            descendants=[image_message(r) for r in descendants],
        )
