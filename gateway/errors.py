"""HTTP errors as JSON `{error: {code, message, details}}`, mapped from gRPC status codes."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.errors import SdstackError
from services.common.request_context import current_request_id

log = logging.getLogger(__name__)

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class ErrorDetailOut(BaseModel):
    field: str
    rule: str


class ErrorInfo(BaseModel):
    code: str = Field(description="gRPC-style reason, e.g. INVALID_ARGUMENT, NOT_FOUND.")
    message: str
    details: list[ErrorDetailOut] = Field(description="Every broken field rule.")
    request_id: str


class ErrorOut(BaseModel):
    """Every error the gateway answers."""

    error: ErrorInfo


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text}
    for status, text in {
        400: "A field breaks a rule (named in details)",
        401: "No valid API key",
        404: "Not found (or not yours)",
        409: "Conflict (e.g. a request id in use)",
        413: "Body too large",
        422: "A field breaks a rule (named in details)",
        429: "Rate limit or busy; see Retry-After",
        503: "A service is unavailable",
        504: "Ran past its deadline",
    }.items()
}


def error_status(error: SdstackError) -> int:
    """The HTTP status of a domain error."""
    return HTTP_STATUS.get(error.status, 500)


def error_body(code: str, message: str, details: list[dict] | None = None) -> dict:
    return {
        "error": {
            "code": code,
            "message": message,
            "details": details or [],
            "request_id": current_request_id(),
        }
    }


def _field_path(location: tuple | list) -> str:
    """`body.width` → `width`, `query.kind` → `kind`: the field as the client named it."""
    parts = list(location)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(str(p) for p in parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SdstackError)
    async def _domain(_request: Request, error: SdstackError) -> JSONResponse:
        status = error_status(error)
        details = [{"field": v.field, "rule": v.rule} for v in error.violations]
        headers = {}
        retry_after = error.retry_after_seconds
        if retry_after is None and status == 429:
            retry_after = 1.0  # every 429 says when to come back, even with no hint from gRPC
        if retry_after is not None:
            headers["Retry-After"] = str(max(1, round(retry_after)))
        if status >= 500 and status not in (501, 503, 504):
            log.error("backend error: %s", error.message)
        return JSONResponse(error_body(error.reason, error.message, details), status, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, error: RequestValidationError) -> JSONResponse:
        details = [{"field": _field_path(e["loc"]), "rule": e["msg"]} for e in error.errors()]
        message = "; ".join(f"{d['field']}: {d['rule']}" for d in details)
        return JSONResponse(error_body("INVALID_ARGUMENT", message, details), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}
        code = codes.get(error.status_code, "HTTP_ERROR")
        return JSONResponse(error_body(code, str(error.detail)), error.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error")
        message = f"internal error (request id {current_request_id()})"
        return JSONResponse(error_body("INTERNAL", message), 500)
