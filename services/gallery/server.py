"""Gallery process: wiring only (`python -m services.gallery.server`)."""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError

from services.common.config import Settings
from services.common.errors import ConfigError
from services.common.grpc_server import GrpcServer, run_service
from services.common.object_store import OUTPUTS_BUCKET
from services.common.proto.sdstack.v1 import gallery_pb2_grpc
from services.common.sql import check_database, create_engine_for
from services.common.wiring import connect_object_store, start_grpc_service
from services.gallery.health import DependencyWatch
from services.gallery.images import Images
from services.gallery.records import BoardRecords, ImageRecords, create_schema
from services.gallery.servicer import GalleryServicer

log = logging.getLogger(__name__)


def build(settings: Settings) -> GrpcServer:
    try:
        engine = create_engine_for(settings.resolved_database_url)
        create_schema(engine)
    except SQLAlchemyError as error:
        raise ConfigError("SDSTACK_DATABASE_URL", f"database unusable: {error}") from None
    store = connect_object_store(settings, [OUTPUTS_BUCKET])
    images = Images(store, ImageRecords(engine), max_pixels=settings.max_pixels * 4)
    servicer = GalleryServicer(images, BoardRecords(engine))
    server = start_grpc_service(
        settings,
        "gallery",
        "sdstack.v1.Gallery",
        lambda s: gallery_pb2_grpc.add_GalleryServicer_to_server(servicer, s),
    )
    server.set_serving(True)
    watch = DependencyWatch(
        server,
        {"database": lambda: check_database(engine), "store": lambda: store.ping(OUTPUTS_BUCKET)},
    )
    watch.start()
    server.on_shutdown(watch.stop)
    log.info("gallery ready on %s", settings.target("gallery"))
    return server


def main() -> None:
    run_service("gallery", build)


if __name__ == "__main__":
    main()
