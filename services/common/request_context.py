"""The request id that follows one request across services, logs and metrics."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_current_request_id: ContextVar[str] = ContextVar("request_id", default="")


def new_request_id() -> str:
    return uuid.uuid4().hex


def is_valid_request_id(candidate: str) -> bool:
    return bool(_VALID_REQUEST_ID.match(candidate))


def clean_request_id(candidate: str | None) -> str:
    """A client-sent id if it is safe to log and echo, else a fresh one."""
    if candidate and is_valid_request_id(candidate):
        return candidate
    return new_request_id()


def current_request_id() -> str:
    return _current_request_id.get()


def set_request_id(request_id: str) -> object:
    """Sets the id for this context; returns a token for `reset_request_id`."""
    return _current_request_id.set(request_id)


def reset_request_id(token: object) -> None:
    _current_request_id.reset(token)  # type: ignore[arg-type]
