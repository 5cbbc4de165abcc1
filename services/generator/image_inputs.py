"""Images a request refers to (ImageRef), fetched and decoded safely."""

from __future__ import annotations

from PIL import Image

from services.common.errors import InvalidArgument, NotFound
from services.common.images import decode_image
from services.common.object_store import OUTPUTS_BUCKET, ObjectStore
from services.common.proto.sdstack.v1 import common_pb2
from services.generator.jobs import ImageResolver

INPUT_PIXEL_FACTOR = 4  # inputs may be larger than outputs: they are resized or upscaled


def image_resolver(store: ObjectStore, max_pixels: int) -> ImageResolver:
    """Resolves inline bytes and `outputs` object keys; gallery ids are the gateway's job."""
    limit = max_pixels * INPUT_PIXEL_FACTOR

    def resolve(ref: common_pb2.ImageRef, field: str) -> Image.Image:
        source = ref.WhichOneof("source")
        if source == "data":
            return decode_image(ref.data, field, max_pixels=limit)
        if source == "object_key":
            try:
                data = store.get_bytes(OUTPUTS_BUCKET, ref.object_key)
            except NotFound:
                raise InvalidArgument(f"{field}.object_key", "no such object") from None
            return decode_image(data, field, max_pixels=limit)
        raise InvalidArgument(
            f"{field}.image_id", "gallery ids are resolved by the gateway; send data"
        )

    return resolve
