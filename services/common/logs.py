"""Structured logging: one line per event, with the service name and request id."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from services.common.request_context import current_request_id


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.request_id = current_request_id() or "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": getattr(record, "service", "-"),
            "request_id": getattr(record, "request_id", "-"),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(service)s [%(request_id)s] %(name)s: %(message)s"


def configure_logging(service: str, level: str = "INFO", fmt: str = "text") -> None:
    """Routes every logger to stderr with the service name and current request id."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter(service))
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "PIL", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # urllib3 warns on every retry; the object store reports the final failure itself.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
