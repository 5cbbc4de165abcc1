"""The gRPC server bootstrap every service uses.

One interceptor gives each RPC its request id (from `x-request-id` metadata or new),
counts and times it for Prometheus, and maps domain errors (`services.common.errors`)
to status codes with an `sdstack.v1.ErrorDetail`. Unexpected exceptions are logged with
their stack trace and reach the client only as INTERNAL with the request id.

The server also runs `grpc.health.v1` (NOT_SERVING until the service says it is ready),
reflection, and drains on SIGTERM/SIGINT: health goes NOT_SERVING, new RPCs are refused,
running ones get `shutdown_grace_seconds` to finish.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from services.common import metrics
from services.common.config import Settings, load_settings
from services.common.errors import ConfigError, SdstackError, translate
from services.common.logs import configure_logging
from services.common.proto.sdstack.v1 import common_pb2
from services.common.request_context import (
    REQUEST_ID_HEADER,
    clean_request_id,
    reset_request_id,
    set_request_id,
)

log = logging.getLogger(__name__)


def error_status(error: SdstackError, request_id: str) -> grpc.Status:
    """The gRPC status (with ErrorDetail) a domain error becomes."""
    detail = common_pb2.ErrorDetail(
        reason=error.reason,
        message=error.message,
        violations=[
            common_pb2.FieldViolation(field=v.field, rule=v.rule) for v in error.violations
        ],
        request_id=request_id,
    )
    if error.retry_after_seconds is not None:
        detail.retry_after.CopyFrom(duration_pb2.Duration(seconds=round(error.retry_after_seconds)))
    packed = any_pb2.Any()
    packed.Pack(detail)
    status = status_pb2.Status(code=error.status.value[0], message=error.message, details=[packed])
    return rpc_status.to_status(status)


def internal_status(request_id: str) -> grpc.Status:
    return error_status(SdstackError(f"internal error (request id {request_id})"), request_id)


@dataclass(frozen=True)
class _MethodLabels:
    service: str
    method: str
    kind: str

    @classmethod
    def parse(cls, full_method: str, handler: grpc.RpcMethodHandler) -> _MethodLabels:
        service, _, method = full_method.lstrip("/").rpartition("/")
        kind = (
            ("bidi_stream" if handler.response_streaming else "client_stream")
            if handler.request_streaming
            else ("server_stream" if handler.response_streaming else "unary")
        )
        return cls(service, method, kind)


class ServiceInterceptor(grpc.ServerInterceptor):
    """Request id, metrics and error mapping for every RPC."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith("/grpc."):
            return handler
        labels = _MethodLabels.parse(handler_call_details.method, handler)
        metadata = dict(handler_call_details.invocation_metadata or ())
        request_id = clean_request_id(metadata.get(REQUEST_ID_HEADER))
        if handler.response_streaming:
            behaviour = handler.stream_stream or handler.unary_stream
            wrapped = self._wrap_streaming(behaviour, labels, request_id)
        else:
            behaviour = handler.stream_unary or handler.unary_unary
            wrapped = self._wrap_unary(behaviour, labels, request_id)
        factory = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(handler.request_streaming, handler.response_streaming)]
        return factory(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap_unary(
        self, behaviour: Callable[..., Any], labels: _MethodLabels, request_id: str
    ) -> Callable[..., Any]:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            with _RpcScope(labels, request_id, context) as scope:
                return scope.run(lambda: behaviour(request, context))

        return handle

    def _wrap_streaming(
        self, behaviour: Callable[..., Iterator[Any]], labels: _MethodLabels, request_id: str
    ) -> Callable[..., Iterator[Any]]:
        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with _RpcScope(labels, request_id, context) as scope:
                yield from scope.run_stream(lambda: behaviour(request, context))

        return handle


class _RpcScope:
    """One RPC's request id context, timing, status counting and error mapping."""

    def __init__(self, labels: _MethodLabels, request_id: str, context: grpc.ServicerContext):
        self.labels = labels
        self.request_id = request_id
        self.context = context
        self.code = grpc.StatusCode.OK

    def __enter__(self) -> _RpcScope:
        self.token = set_request_id(self.request_id)
        self.started = time.perf_counter()
        self.context.set_trailing_metadata(((REQUEST_ID_HEADER, self.request_id),))
        metrics.GRPC_STARTED.labels(self.labels.service, self.labels.method, self.labels.kind).inc()
        metrics.GRPC_IN_FLIGHT.labels(self.labels.service, self.labels.method).inc()
        return self

    def __exit__(self, *exc_info: object) -> None:
        labels = self.labels
        if exc_info[0] is GeneratorExit or not self.context.is_active():
            self.code = grpc.StatusCode.CANCELLED if self.code is grpc.StatusCode.OK else self.code
        metrics.GRPC_IN_FLIGHT.labels(labels.service, labels.method).dec()
        metrics.GRPC_HANDLED.labels(
            labels.service, labels.method, labels.kind, self.code.name
        ).inc()
        metrics.GRPC_HANDLING_SECONDS.labels(labels.service, labels.method, labels.kind).observe(
            time.perf_counter() - self.started
        )
        reset_request_id(self.token)

    def run(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as error:  # every failure must reach the client as a status
            self._abort(error)

    def run_stream(self, call: Callable[[], Iterator[Any]]) -> Iterator[Any]:
        try:
            yield from call()
        except Exception as error:  # as in `run`: a failure mid-stream becomes a status too
            self._abort(error)

    def _abort(self, error: Exception) -> None:
        known = translate(error)  # a domain error, or a library's (e.g. database gone)
        if known is not None:
            self.code = known.status
            log.info("%s/%s failed: %s", self.labels.service, self.labels.method, known.message)
            self.context.abort_with_status(error_status(known, self.request_id))
        if self.context.code() not in (None, grpc.StatusCode.OK):
            self.code = self.context.code()  # aborted by the handler itself
            raise error
        self.code = grpc.StatusCode.INTERNAL
        log.exception("%s/%s crashed", self.labels.service, self.labels.method)
        self.context.abort_with_status(internal_status(self.request_id))


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service to host: its full name and the function that registers it."""

    full_name: str
    register: Callable[[grpc.Server], None]


class GrpcServer:
    """A gRPC server with health, reflection, the interceptor and graceful shutdown."""

    def __init__(
        self,
        settings: Settings,
        *,
        port: int,
        port_setting: str,
        bindings: list[ServiceBinding],
    ) -> None:
        self.settings = settings
        self.port = port
        self.port_setting = port_setting
        self.bindings = bindings
        self.health = health.HealthServicer()
        self.stopped = threading.Event()
        self._shutdown_hooks: list[Callable[[], None]] = []
        self.server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=settings.grpc_workers, thread_name_prefix="grpc"
            ),
            interceptors=[ServiceInterceptor()],
            options=[
                ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
                ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )

    def start(self) -> None:
        metrics.ensure_port_free(self.settings.host, self.port, self.port_setting)
        for binding in self.bindings:
            binding.register(self.server)
            self.health.set(binding.full_name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [b.full_name for b in self.bindings]
            + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        address = f"{self.settings.host}:{self.port}"
        try:
            self.server.add_insecure_port(address)
        except RuntimeError as error:
            raise ConfigError(self.port_setting, f"cannot listen on {address}: {error}") from None
        self.server.start()
        log.info("gRPC listening on %s", address)

    def set_serving(self, serving: bool) -> None:
        state = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *(b.full_name for b in self.bindings)]:
            self.health.set(name, state)

    def on_shutdown(self, hook: Callable[[], None]) -> None:
        """Runs `hook` after the RPCs have drained (e.g. to stop a worker)."""
        self._shutdown_hooks.append(hook)

    def stop(self) -> None:
        """Drains: health NOT_SERVING, refuse new RPCs, let running ones finish."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(self.settings.shutdown_grace_seconds).wait()
        for hook in self._shutdown_hooks:
            hook()
        log.info("stopped")

    def stop_on_signals(self) -> None:
        def _handle(signum: int, _frame: object) -> None:
            log.info("received %s, draining", signal.Signals(signum).name)
            threading.Thread(target=self.stop, name="drain").start()

        signal.signal(signal.SIGTERM, _handle)
        signal.signal(signal.SIGINT, _handle)

    def wait(self) -> None:
        self.stopped.wait()
        self.server.wait_for_termination()


def run_service(name: str, build: Callable[[Settings], GrpcServer | None]) -> None:
    """Entry point of a service process: settings, logging, build, serve until a signal.

    `build` wires the service and returns its started server (already marked ready).
    A `ConfigError` or an unreachable dependency stops start-up with one line on stderr
    and exit status 2; nothing is left half-started because `build` owns its cleanup.
    """
    try:
        settings = load_settings()
    except ConfigError as error:
        sys.stderr.write(f"{name}: configuration error: {error}\n")
        raise SystemExit(2) from None
    configure_logging(name, settings.log_level, settings.log_format)
    try:
        server = build(settings)
    except (ConfigError, SdstackError) as error:
        sys.stderr.write(f"{name}: cannot start: {error}\n")
        raise SystemExit(2) from None
    if server is None:
        return
    server.stop_on_signals()
    server.wait()
