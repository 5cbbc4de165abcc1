"""The gateway's FastAPI application: routes by resource, errors, request ids, metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import Counter, Histogram

from gateway.backends import Backends
from gateway.errors import install_error_handlers
from gateway.routes import generations, health, images
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


def create_app(clients: Backends) -> FastAPI:
    app = FastAPI(
        title="sdstack",
        version="0.1.0",
        description="Self-hosted Stable Diffusion: generation, gallery and LoRA training.",
        # FastAPI's docs pages load their scripts from a CDN; nothing may call out at run
        # time, so only the OpenAPI document is served until the docs assets are bundled.
        docs_url=None,
        redoc_url=None,
    )
    app.state.backends = clients
    install_error_handlers(app)
    for module in (health, generations, images):
        app.include_router(module.router)

    @app.middleware("http")
    async def request_context(
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

    return app
