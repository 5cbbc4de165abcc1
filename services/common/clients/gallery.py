"""Typed client of the Gallery service."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import timedelta

import grpc
from google.protobuf import duration_pb2, field_mask_pb2

from services.common.clients.channel import ServiceClient, to_domain_error
from services.common.proto.sdstack.v1 import gallery_pb2, gallery_pb2_grpc


class GalleryClient(ServiceClient):
    SERVICE = "sdstack.v1.Gallery"
    IDEMPOTENT_METHODS = (
        "GetImage",
        "ListImages",
        "GetImageFile",
        "GetImageUrl",
        "GetLineage",
        "ListBoards",
        "UpdateImage",
        "RenameBoard",
        "DeleteImage",
        "DeleteBoard",
    )

    def __init__(self, target: str, *, timeout: float = 30.0) -> None:
        super().__init__(target, timeout=timeout)
        self.stub = gallery_pb2_grpc.GalleryStub(self.channel)

    def create_image(self, request: gallery_pb2.CreateImageRequest) -> gallery_pb2.Image:
        return self._call(self.stub.CreateImage, request)

    def get_image(self, owner: str, image_id: str) -> gallery_pb2.Image:
        request = gallery_pb2.GetImageRequest(owner=owner, image_id=image_id)
        return self._call(self.stub.GetImage, request)

    def list_images(self, request: gallery_pb2.ListImagesRequest) -> gallery_pb2.ListImagesResponse:
        return self._call(self.stub.ListImages, request)

    def image_file(
        self,
        owner: str,
        image_id: str,
        variant: gallery_pb2.FileVariant = gallery_pb2.FILE_VARIANT_ORIGINAL,
    ) -> tuple[str, Iterator[bytes]]:
        """The file's content type and its bytes as a stream (errors raised before)."""
        request = gallery_pb2.GetImageFileRequest(owner=owner, image_id=image_id, variant=variant)
        stream = self.stub.GetImageFile(request, timeout=self.timeout)
        try:
            first = next(stream)
        except StopIteration:
            return "application/octet-stream", iter(())
        except grpc.RpcError as error:
            raise to_domain_error(error) from None

        def chunks() -> Iterator[bytes]:
            yield first.data
            try:
                for chunk in stream:
                    yield chunk.data
            except grpc.RpcError as error:
                raise to_domain_error(error) from None

        return first.content_type or "application/octet-stream", chunks()

    def delete_image(self, owner: str, image_id: str) -> None:
        request = gallery_pb2.DeleteImageRequest(owner=owner, image_id=image_id)
        self._call(self.stub.DeleteImage, request)

    def get_image_url(
        self,
        owner: str,
        image_id: str,
        variant: gallery_pb2.FileVariant = gallery_pb2.FILE_VARIANT_ORIGINAL,
        expires_in: timedelta | None = None,
    ) -> gallery_pb2.GetImageUrlResponse:
        request = gallery_pb2.GetImageUrlRequest(owner=owner, image_id=image_id, variant=variant)
        if expires_in is not None:
            request.expires_in.CopyFrom(_duration(expires_in))
        return self._call(self.stub.GetImageUrl, request)

    def update_image(
        self,
        owner: str,
        image_id: str,
        *,
        favourite: bool | None = None,
        tags: Iterable[str] | None = None,
        board_ids: Iterable[str] | None = None,
    ) -> gallery_pb2.Image:
        """Change what is given (None: unchanged); lists replace the old ones."""
        paths = [
            name
            for name, value in (("favourite", favourite), ("tags", tags), ("board_ids", board_ids))
            if value is not None
        ]
        request = gallery_pb2.UpdateImageRequest(
            owner=owner,
            image_id=image_id,
            favourite=bool(favourite),
            tags=list(tags or ()),
            board_ids=list(board_ids or ()),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        )
        return self._call(self.stub.UpdateImage, request)

    def lineage(self, owner: str, image_id: str) -> gallery_pb2.GetLineageResponse:
        request = gallery_pb2.GetLineageRequest(owner=owner, image_id=image_id)
        return self._call(self.stub.GetLineage, request)

    def create_board(self, owner: str, name: str) -> gallery_pb2.Board:
        request = gallery_pb2.CreateBoardRequest(owner=owner, name=name)
        return self._call(self.stub.CreateBoard, request)

    def list_boards(self, owner: str) -> list[gallery_pb2.Board]:
        reply = self._call(self.stub.ListBoards, gallery_pb2.ListBoardsRequest(owner=owner))
        return list(reply.boards)

    def rename_board(self, owner: str, board_id: str, name: str) -> gallery_pb2.Board:
        request = gallery_pb2.RenameBoardRequest(owner=owner, board_id=board_id, name=name)
        return self._call(self.stub.RenameBoard, request)

    def delete_board(self, owner: str, board_id: str) -> None:
        request = gallery_pb2.DeleteBoardRequest(owner=owner, board_id=board_id)
        self._call(self.stub.DeleteBoard, request)

    def import_images(
        self, owner: str, files: Iterable[gallery_pb2.ImportImagesRequest]
    ) -> gallery_pb2.ImportImagesResponse:
        """Streams `files` (filename, png, modified_at) after a first message naming `owner`."""

        def messages() -> Iterator[gallery_pb2.ImportImagesRequest]:
            yield gallery_pb2.ImportImagesRequest(owner=owner)
            yield from files

        return self._call(self.stub.ImportImages, messages())

    def reconcile(
        self,
        *,
        dry_run: bool = False,
        remove_orphan_records: bool = False,
        min_age: timedelta | None = None,
    ) -> gallery_pb2.ReconcileReport:
        request = gallery_pb2.ReconcileRequest(
            dry_run=dry_run, remove_orphan_records=remove_orphan_records
        )
        if min_age is not None:
            request.min_age.CopyFrom(_duration(min_age))
        return self._call(self.stub.Reconcile, request)


def _duration(value: timedelta) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(value)
    return duration
