"""What every typed client shares: the channel, deadlines, retries and request ids.

Retries of idempotent calls are gRPC's own (a service config with a retry policy on
UNAVAILABLE), so a call that reached a dying replica is retried on another one;
non-idempotent calls (Generate, CreateImage, …) are never retried. Targets may be
`dns:///name:port` with several replicas: calls are balanced round-robin.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from services.common import errors
from services.common.proto.sdstack.v1 import common_pb2
from services.common.request_context import (
    REQUEST_ID_HEADER,
    current_request_id,
    new_request_id,
)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_RECONNECT_BACKOFF_MS = 10_000
"""A restarted replica gets calls again within this long (gRPC's default grows to 120 s)."""

_RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def service_config(service: str, idempotent_methods: Iterable[str]) -> str:
    """gRPC service config: round-robin, and retries for the idempotent methods only."""
    names = [{"service": service, "method": m} for m in idempotent_methods]
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if names:
        config["methodConfig"] = [{"name": names, "retryPolicy": _RETRY_POLICY}]
    return json.dumps(config)


class _RequestIdInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Sends the current request id (or a new one) as `x-request-id` metadata."""

    def _with_request_id(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = list(details.metadata or ())
        if not any(key == REQUEST_ID_HEADER for key, _ in metadata):
            metadata.append((REQUEST_ID_HEADER, current_request_id() or new_request_id()))
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Callable, details: Any, request: Any) -> Any:
        return continuation(self._with_request_id(details), request)

    def intercept_unary_stream(self, continuation: Callable, details: Any, request: Any) -> Any:
        return continuation(self._with_request_id(details), request)

    def intercept_stream_unary(self, continuation: Callable, details: Any, requests: Any) -> Any:
        return continuation(self._with_request_id(details), requests)

    def intercept_stream_stream(self, continuation: Callable, details: Any, requests: Any) -> Any:
        return continuation(self._with_request_id(details), requests)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def open_channel(target: str, service: str, idempotent_methods: Iterable[str]) -> grpc.Channel:
    channel = grpc.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", 1),
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
            ("grpc.service_config", service_config(service, idempotent_methods)),
        ],
    )
    return grpc.intercept_channel(channel, _RequestIdInterceptor())


def to_domain_error(error: grpc.RpcError) -> errors.RemoteError:
    """Turns a failed call back into the error the service raised, details included."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else "") or code.name
    detail = _error_detail(error)
    if detail is None:
        return errors.RemoteError(code, message)
    retry_after = float(detail.retry_after.seconds) if detail.HasField("retry_after") else None
    violations = [errors.FieldViolation(v.field, v.rule) for v in detail.violations]
    return errors.RemoteError(code, detail.message or message, violations, retry_after)


def _error_detail(error: grpc.RpcError) -> common_pb2.ErrorDetail | None:
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except (ValueError, AttributeError):
        return None
    if status is None:
        return None
    for packed in status.details:
        detail = common_pb2.ErrorDetail()
        if packed.Unpack(detail):
            return detail
    return None


class ServiceClient:
    """Base of the typed clients: one channel, a default deadline, a health check."""

    SERVICE = ""
    IDEMPOTENT_METHODS: tuple[str, ...] = ()

    def __init__(self, target: str, *, timeout: float = 30.0) -> None:
        self.target = target
        self.timeout = timeout
        self.channel = open_channel(target, self.SERVICE, self.IDEMPOTENT_METHODS)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def is_serving(self, timeout: float = 2.0) -> bool:
        """True when the service answers health SERVING."""
        try:
            reply = self._health.Check(
                health_pb2.HealthCheckRequest(service=self.SERVICE), timeout=timeout
            )
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as error:
            raise to_domain_error(error) from None

    def _stream(self, method: Callable[..., Any], request: Any, timeout: float) -> Iterator[Any]:
        """A server stream's messages, errors as domain errors; closing the iterator (or
        leaving it early) cancels the call."""
        stream = method(request, timeout=timeout)
        try:
            yield from stream
        except grpc.RpcError as error:
            raise to_domain_error(error) from None
        finally:
            stream.cancel()
