"""The gateway's FastAPI application: routes by resource, auth, errors, request ids, metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.a1111 import routes as a1111
from gateway.a1111.routes import OptionsBook
from gateway.auth import Authenticator, RateLimiter
from gateway.backends import Backends
from gateway.docs import install_docs
from gateway.errors import ERROR_RESPONSES, error_body, install_error_handlers
from gateway.generation import Generations
from gateway.routes import boards, datasets, generations, health, images, models, styles, trainings
from gateway.routes.ui import install_ui
from services.common.config import Settings
from services.common.request_context import (
    REQUEST_ID_HEADER,
    clean_request_id,
    reset_request_id,
    set_request_id,
)

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests by route and status.", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency by route.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
UPLOAD_PATHS = frozenset({"/v1/models", "/v1/datasets"})  # spooled to disk, their own limits


def create_app(clients: Backends, settings: Settings) -> FastAPI:
    app = FastAPI(
        title="sdstack",
        version="0.1.0",
        description="Self-hosted Stable Diffusion: generation, gallery and LoRA training. "
        "REST under /v1, the AUTOMATIC1111 API under /sdapi/v1.",
        docs_url=None,  # FastAPI's page loads from a CDN; ours is served by install_docs
        redoc_url=None,
        responses=ERROR_RESPONSES,  # every route documents the error shape it may answer
    )
    app.state.backends = clients
    app.state.settings = settings
    app.state.generations = Generations(
        clients,
        max_pixels=settings.max_pixels,
        default_timeout=settings.request_timeout_seconds,
    )
    app.state.a1111_options = OptionsBook()
    install_error_handlers(app)
    install_docs(app)
    for module in (health, generations, images, boards, models, styles, a1111):
        app.include_router(module.router)
    app.include_router(datasets.router)
    app.include_router(trainings.router)
    install_ui(app)  # the web UI at / (static, public; its API calls carry the key)

    # innermost: a body over the limit raises while the route reads it (no middleware between)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
    app.middleware("http")(Authenticator(settings.api_key_users(), limiter))
    app.middleware("http")(_request_context)
    return app


class BodyLimit:
    """413 for a body over `max_bytes`: at once by its Content-Length, or as soon as a body
    sent without one (chunked) grows past the limit while it is read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        rule = f"the body must be at most {self.max_bytes} bytes"
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            await JSONResponse(error_body("PAYLOAD_TOO_LARGE", rule), 413)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, rule)
            return message

        await self.app(scope, limited, send)


async def _request_context(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    request_id = clean_request_id(request.headers.get(REQUEST_ID_HEADER))
    token = set_request_id(request_id)
    started = time.perf_counter()
    try:
        response = await call_next(request)
    finally:
        reset_request_id(token)
    route = request.scope.get("route")
    label = getattr(route, "path", "unmatched")
    HTTP_REQUESTS.labels(request.method, label, str(response.status_code)).inc()
    HTTP_SECONDS.labels(request.method, label).observe(time.perf_counter() - started)
    response.headers[REQUEST_ID_HEADER] = request_id
    return response
