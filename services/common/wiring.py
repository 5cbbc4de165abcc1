"""Start-up steps every service shares: reach the object store, serve metrics and gRPC."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import grpc

from services.common.config import Settings
from services.common.errors import ConfigError, Unavailable
from services.common.grpc_server import GrpcServer, ServiceBinding
from services.common.metrics import start_metrics_server
from services.common.object_store import ObjectStore

log = logging.getLogger(__name__)


def s3_endpoint(settings: Settings) -> str:
    """The configured S3 endpoint, or the bundled local server's."""
    return settings.s3_endpoint or f"{settings.host}:{settings.s3_port}"


def connect_object_store(settings: Settings, buckets: list[str]) -> ObjectStore:
    """An object store that answered, with `buckets` created; else one clear ConfigError."""
    endpoint = s3_endpoint(settings)
    store = ObjectStore(
        endpoint,
        settings.s3_access_key,
        settings.s3_secret_key,
        secure=settings.s3_secure,
        region=settings.s3_region or None,
    )
    setting = "SDSTACK_S3_ENDPOINT" if settings.s3_endpoint else "SDSTACK_S3_PORT"
    try:
        store.ping()
        store.ensure_buckets(buckets)
    except Unavailable as error:
        raise ConfigError(setting, error.message) from None
    log.info("object store at %s ready", endpoint)
    return store


ServiceName = Literal["generator", "trainer", "gallery"]


def serve_metrics(settings: Settings, service: ServiceName) -> None:
    port = getattr(settings, f"{service}_metrics_port")
    start_metrics_server(settings.host, port, f"SDSTACK_{service.upper()}_METRICS_PORT")
    log.info("metrics on http://%s:%d/metrics", settings.host, port)


def start_grpc_service(
    settings: Settings,
    service: ServiceName,
    full_name: str,
    register: Callable[[grpc.Server], None],
) -> GrpcServer:
    """Serves `/metrics` and the gRPC service on the ports of `service`, health NOT_SERVING.

    The caller finishes its warm-up, then calls `set_serving(True)`.
    """
    server = GrpcServer(
        settings,
        port=getattr(settings, f"{service}_port"),
        port_setting=f"SDSTACK_{service.upper()}_PORT",
        bindings=[ServiceBinding(full_name, register)],
    )
    serve_metrics(settings, service)
    server.start()
    return server
