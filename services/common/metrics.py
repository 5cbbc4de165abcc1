"""Prometheus metrics every service exports, and the `/metrics` endpoint."""

from __future__ import annotations

import socket

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from services.common.errors import ConfigError

GRPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_service", "grpc_method", "grpc_type"],
)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its end, streaming included.",
    ["grpc_service", "grpc_method", "grpc_type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
GRPC_IN_FLIGHT = Gauge(
    "grpc_server_in_flight", "RPCs being handled now.", ["grpc_service", "grpc_method"]
)


def ensure_port_free(host: str, port: int, setting: str) -> None:
    """Raises `ConfigError` naming `setting` when `host:port` cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(
                setting, f"cannot listen on {host}:{port}: {error.strerror}"
            ) from None


def start_metrics_server(host: str, port: int, setting: str) -> None:
    """Serves `/metrics` on its own port (a daemon thread)."""
    ensure_port_free(host, port, setting)
    start_http_server(port, addr=host)
