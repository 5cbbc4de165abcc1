"""What the gallery tests share: A1111-style PNGs, and the gallery gRPC service served
in-process on a real socket, against the real local S3 and a real database.

Each service gets its own bucket, so reconcile (which reads a whole bucket) sees only
what its test wrote.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image
from sqlalchemy import Engine

from sdstack.launcher import free_ports
from services.common.clients import GalleryClient
from services.common.config import load_settings
from services.common.grpc_server import GrpcServer, ServiceBinding
from services.common.infotext import format_infotext, png_with_infotext
from services.common.object_store import ObjectStore
from services.common.proto.sdstack.v1 import gallery_pb2_grpc
from services.common.sql import create_engine_for
from services.gallery.images import Images
from services.gallery.records import BoardRecords, ImageRecords, create_schema
from services.gallery.servicer import GalleryServicer

MAX_PIXELS = 4 * 2048 * 2048


def a1111_png(
    prompt: str = "a timber house on a hill",
    *,
    negative: str = "blurry",
    seed: int = 965400086,
    model: str = "v1-5-pruned-emaonly",
    size: tuple[int, int] = (64, 48),
    colour: tuple[int, int, int] = (120, 80, 40),
    **params: object,
) -> bytes:
    """A PNG carrying A1111's `parameters` chunk, as A1111 and the generator write it."""
    values: dict[str, object] = {
        "Steps": 20,
        "Sampler": "Euler a",
        "CFG scale": 7,
        "Seed": seed,
        "Size": f"{size[0]}x{size[1]}",
        "Model hash": "6ce0161689",
        "Model": model,
        **params,
    }
    return png_with_infotext(
        Image.new("RGB", size, colour), format_infotext(prompt, negative, values)
    )


def plain_png(size: tuple[int, int] = (32, 32)) -> bytes:
    """A PNG without any parameters chunk."""
    out = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(out, format="PNG")
    return out.getvalue()


@dataclass
class GalleryService:
    """A running gallery: its facade (to reach behind the API), its client, its bucket."""

    images: Images
    boards: BoardRecords
    client: GalleryClient
    store: ObjectStore
    bucket: str
    engine: Engine
    target: str

    def object_keys(self) -> list[str]:
        return sorted(info.key for info in self.store.list(self.bucket))


def make_images(store: ObjectStore, database_url: str) -> tuple[Images, BoardRecords, Engine]:
    """The facade on a fresh bucket of `store` and the database at `database_url`."""
    engine = create_engine_for(database_url)
    create_schema(engine)
    bucket = f"outputs-{uuid.uuid4().hex[:12]}"
    store.ensure_buckets([bucket])
    images = Images(store, ImageRecords(engine), max_pixels=MAX_PIXELS, bucket=bucket)
    return images, BoardRecords(engine), engine


@contextmanager
def serve_gallery(store: ObjectStore, database_url: str) -> Iterator[GalleryService]:
    """The gallery gRPC service (interceptor, health, error mapping) on a free port."""
    images, boards, engine = make_images(store, database_url)
    port = free_ports(1)[0]
    settings = load_settings(gallery_port=port, shutdown_grace_seconds=0, grpc_workers=4)
    servicer = GalleryServicer(images, boards)
    server = GrpcServer(
        settings,
        port=port,
        port_setting="SDSTACK_GALLERY_PORT",
        bindings=[
            ServiceBinding(
                "sdstack.v1.Gallery",
                lambda s: gallery_pb2_grpc.add_GalleryServicer_to_server(servicer, s),
            )
        ],
    )
    server.start()
    server.set_serving(True)
    target = f"127.0.0.1:{port}"
    client = GalleryClient(target, timeout=60)
    try:
        yield GalleryService(images, boards, client, store, images.bucket, engine, target)
    finally:
        client.close()
        server.stop()
        engine.dispose()
