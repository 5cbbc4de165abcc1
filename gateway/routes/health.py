"""Liveness, readiness and Prometheus metrics of the gateway."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.backends import Clients

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The gateway process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Ready only when every backend answers health SERVING")
def readyz(clients: Clients) -> JSONResponse:
    with ThreadPoolExecutor(max_workers=3) as pool:
        checks = {name: pool.submit(c.is_serving) for name, c in clients.all().items()}
        states = {name: "serving" if f.result() else "unavailable" for name, f in checks.items()}
    ready = all(state == "serving" for state in states.values())
    body = {"status": "ready" if ready else "not ready", "backends": states}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
