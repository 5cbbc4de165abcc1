"""Container health check for the sdstack images (Docker `HEALTHCHECK`).

`python healthcheck.py gateway` asks the gateway's `/healthz`; `python healthcheck.py
generator|trainer|gallery` asks the service's standard gRPC health (`grpc.health.v1`).
The port comes from the same `SDSTACK_*_PORT` variable the service reads. Exit 0 when
healthy, 1 otherwise, with one line saying why. Kubernetes does not use this: its probes
call the same endpoints natively (deploy/k8s).
"""

from __future__ import annotations

import os
import sys
import urllib.request

DEFAULT_PORTS = {"gateway": 7860, "generator": 50051, "trainer": 50052, "gallery": 50053}
TIMEOUT_SECONDS = 4.0


def _address(service: str) -> tuple[str, int]:
    host = os.environ.get("SDSTACK_HOST", "127.0.0.1")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    port = int(os.environ.get(f"SDSTACK_{service.upper()}_PORT", DEFAULT_PORTS[service]))
    return host, port


def check_http(host: str, port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=TIMEOUT_SECONDS) as r:
            return None if r.status == 200 else f"/healthz answered {r.status}"
    except OSError as error:
        return f"/healthz unreachable: {error}"


def check_grpc(host: str, port: int) -> str | None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_SECONDS
            )
        except grpc.RpcError as error:
            return f"gRPC health unreachable: {error.code().name}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"gRPC health is {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in DEFAULT_PORTS:
        sys.stderr.write(f"usage: healthcheck.py {{{'|'.join(DEFAULT_PORTS)}}}\n")
        return 2
    service = argv[0]
    host, port = _address(service)
    problem = check_http(host, port) if service == "gateway" else check_grpc(host, port)
    if problem:
        sys.stderr.write(f"{service} on {host}:{port} unhealthy: {problem}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
