"""Typed client of the Gallery service."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

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
