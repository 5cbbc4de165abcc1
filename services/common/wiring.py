"""Start-up steps every service shares: reach the object store, serve metrics."""

from __future__ import annotations

import logging

from services.common.config import Settings
from services.common.errors import ConfigError, Unavailable
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


def serve_metrics(settings: Settings, service: str) -> None:
    port = getattr(settings, f"{service}_metrics_port")
    start_metrics_server(settings.host, port, f"SDSTACK_{service.upper()}_METRICS_PORT")
    log.info("metrics on http://%s:%d/metrics", settings.host, port)
