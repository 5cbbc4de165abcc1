"""Gallery gRPC servicer: translates protobuf to the `Images` facade, the boards and
reconcile, and back. No rule lives here beyond the contract's defaults."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, timedelta

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from services.common.errors import InvalidArgument
from services.common.generation import GenerationRequest
from services.common.generation.infotext import request_from_infotext
from services.common.generation.proto import request_from_proto, request_to_proto
from services.common.generation.request import renamed
from services.common.infotext import parse_infotext
from services.common.proto.sdstack.v1 import (
    common_pb2,
    gallery_pb2,
    gallery_pb2_grpc,
    generator_pb2,
)
from services.gallery.images import DEFAULT_URL_EXPIRY, Images, ImageSettings
from services.gallery.reconcile import DEFAULT_MIN_AGE, reconcile
from services.gallery.records import BoardRecords, BoardRow, ImageRow, check_owner

FILE_CHUNK_BYTES = 512 * 1024
DEFAULT_PAGE = 50
UPDATABLE = ("favourite", "tags", "board_ids")


def _timestamp(value: object) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)  # type: ignore[arg-type]
    return stamp


def _generation(row: ImageRow) -> generator_pb2.GenerateRequest:
    """What made the image, as stored ("use these parameters"); for a record older than
    that, as its infotext says."""
    if row.generation is not None:
        return request_to_proto(GenerationRequest.model_validate(row.generation))
    return request_to_proto(request_from_infotext(parse_infotext(row.infotext)))


def image_message(row: ImageRow) -> gallery_pb2.Image:
    return gallery_pb2.Image(
        id=row.id,
        owner=row.owner,
        created_at=_timestamp(row.created_at),
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
        size_bytes=row.size_bytes,
        generation=_generation(row),
    )


def board_message(row: BoardRow) -> gallery_pb2.Board:
    return gallery_pb2.Board(
        id=row.id,
        owner=row.owner,
        name=row.name,
        created_at=_timestamp(row.created_at),
        image_count=row.image_count,
    )


def _settings(request: gallery_pb2.CreateImageRequest) -> ImageSettings:
    generation = None
    if request.HasField("generation"):
        try:
            generation = request_from_proto(request.generation)
        except InvalidArgument as error:
            raise renamed(error, lambda path: f"generation.{path}") from None
    return ImageSettings(generation=generation, model_hash=request.model_hash or None)


def _duration(request: Message, field: str, default: timedelta) -> timedelta:
    """The request's Duration field, or `default` when it is unset (not when it is 0)."""
    if not request.HasField(field):
        return default
    value: duration_pb2.Duration = getattr(request, field)
    if value.seconds < 0 or value.nanos < 0:
        raise InvalidArgument(field, "must not be negative")
    return value.ToTimedelta()


def _update_paths(request: gallery_pb2.UpdateImageRequest) -> set[str]:
    paths = set(request.update_mask.paths)
    if not paths:
        raise InvalidArgument("update_mask", f"must name at least one of {', '.join(UPDATABLE)}")
    unknown = sorted(paths - set(UPDATABLE))
    if unknown:
        raise InvalidArgument("update_mask", f"unknown paths {unknown}; allowed: {UPDATABLE}")
    return paths


class GalleryServicer(gallery_pb2_grpc.GalleryServicer):
    def __init__(self, images: Images, boards: BoardRecords) -> None:
        self.images = images
        self.boards = boards

    # -- images

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

    def GetImageUrl(
        self, request: gallery_pb2.GetImageUrlRequest, context: grpc.ServicerContext
    ) -> gallery_pb2.GetImageUrlResponse:
        url, expires_at = self.images.url(
            request.owner,
            request.image_id,
            thumbnail=request.variant == gallery_pb2.FILE_VARIANT_THUMBNAIL,
            expires_in=_duration(request, "expires_in", DEFAULT_URL_EXPIRY),
        )
        return gallery_pb2.GetImageUrlResponse(url=url, expires_at=_timestamp(expires_at))

    def UpdateImage(
        self, request: gallery_pb2.UpdateImageRequest, context: grpc.ServicerContext
    ) -> gallery_pb2.Image:
        paths = _update_paths(request)
        row = self.images.update(
            request.owner,
            request.image_id,
            favourite=request.favourite if "favourite" in paths else None,
            tags=list(request.tags) if "tags" in paths else None,
            board_ids=list(request.board_ids) if "board_ids" in paths else None,
        )
        return image_message(row)

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

    # -- boards

    def CreateBoard(
        self, request: gallery_pb2.CreateBoardRequest, context: grpc.ServicerContext
    ) -> gallery_pb2.Board:
        return board_message(self.boards.create(request.owner, request.name))

    def ListBoards(
        self, request: gallery_pb2.ListBoardsRequest, context: grpc.ServicerContext
    ) -> gallery_pb2.ListBoardsResponse:
        boards = self.boards.list(request.owner)
        return gallery_pb2.ListBoardsResponse(boards=[board_message(b) for b in boards])

    def RenameBoard(
        self, request: gallery_pb2.RenameBoardRequest, context: grpc.ServicerContext
    ) -> gallery_pb2.Board:
        return board_message(self.boards.rename(request.owner, request.board_id, request.name))

    def DeleteBoard(
        self, request: gallery_pb2.DeleteBoardRequest, context: grpc.ServicerContext
    ) -> gallery_pb2.DeleteBoardResponse:
        self.boards.delete(request.owner, request.board_id)
        return gallery_pb2.DeleteBoardResponse()

    # -- imports and repairs

    def ImportImages(
        self,
        request_iterator: Iterator[gallery_pb2.ImportImagesRequest],
        context: grpc.ServicerContext,
    ) -> gallery_pb2.ImportImagesResponse:
        first = next(request_iterator, None)
        owner = check_owner(first.owner if first is not None else "")
        reply = gallery_pb2.ImportImagesResponse()
        for index, message in enumerate(request_iterator):
            name = message.filename or f"file {index + 1}"
            stamp = message.modified_at if message.HasField("modified_at") else None
            created_at = stamp.ToDatetime(tzinfo=UTC) if stamp is not None else None
            try:
                row = self.images.import_png(owner, name, message.png, created_at=created_at)
            except InvalidArgument as error:
                rule = error.violations[0].rule
                reply.skipped.append(common_pb2.FieldViolation(field=name, rule=rule))
                continue
            reply.imported.append(image_message(row))
        return reply

    def Reconcile(
        self, request: gallery_pb2.ReconcileRequest, context: grpc.ServicerContext
    ) -> gallery_pb2.ReconcileReport:
        report = reconcile(
            self.images,
            dry_run=request.dry_run,
            remove_orphan_records=request.remove_orphan_records,
            min_age=_duration(request, "min_age", DEFAULT_MIN_AGE),
        )
        return gallery_pb2.ReconcileReport(
            orphan_objects=report.orphan_objects,
            orphan_records=report.orphan_records,
            restored=report.restored,
            thumbnails_rebuilt=report.thumbnails_rebuilt,
            unrecognised_objects=report.unrecognised_objects,
        )
