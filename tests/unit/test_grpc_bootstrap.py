"""The shared gRPC bootstrap over a real socket: errors, request ids, health, metrics."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from services.common.clients import TrainerClient
from services.common.config import load_settings
from services.common.errors import ConfigError, InvalidArgument, NotFound, RemoteError
from services.common.grpc_server import GrpcServer, ServiceBinding
from services.common.proto.sdstack.v1 import trainer_pb2, trainer_pb2_grpc
from services.common.request_context import current_request_id, reset_request_id, set_request_id


class ProbeTrainer(trainer_pb2_grpc.TrainerServicer):
    """Each method exercises one path of the interceptor."""

    def EstimateTraining(self, request, context):
        raise InvalidArgument("config.network_dim", "must be between 1 and 256")

    def GetTraining(self, request, context):
        raise ValueError("a bug with a secret path /srv/secret")

    def ListDatasets(self, request, context):
        return trainer_pb2.ListDatasetsResponse(
            datasets=[trainer_pb2.Dataset(name=current_request_id())]
        )

    def WatchTraining(self, request, context) -> Iterator[trainer_pb2.TrainingEvent]:
        yield trainer_pb2.TrainingEvent(job_id="j1")
        raise NotFound("training", request.job_id)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server() -> Iterator[GrpcServer]:
    settings = load_settings(trainer_port=_free_port(), shutdown_grace_seconds=1)
    servicer = ProbeTrainer()
    grpc_server = GrpcServer(
        settings,
        port=settings.trainer_port,
        port_setting="SDSTACK_TRAINER_PORT",
        bindings=[
            ServiceBinding(
                "sdstack.v1.Trainer",
                lambda s: trainer_pb2_grpc.add_TrainerServicer_to_server(servicer, s),
            )
        ],
    )
    grpc_server.start()
    yield grpc_server
    grpc_server.stop()


@pytest.fixture
def client(server: GrpcServer) -> Iterator[TrainerClient]:
    with TrainerClient(server.settings.target("trainer"), timeout=5) as trainer:
        yield trainer


def test_domain_error_becomes_status_with_field_details(client: TrainerClient) -> None:
    with pytest.raises(RemoteError) as raised:
        client.estimate("alice", trainer_pb2.TrainingConfig())
    error = raised.value
    assert error.status is grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.rule) for v in error.violations] == [
        ("config.network_dim", "must be between 1 and 256")
    ]


def test_unexpected_error_is_internal_without_its_text(client: TrainerClient) -> None:
    with pytest.raises(RemoteError) as raised:
        client._call(client.stub.GetTraining, trainer_pb2.GetTrainingRequest(job_id="x"))
    assert raised.value.status is grpc.StatusCode.INTERNAL
    assert "secret" not in raised.value.message
    assert "request id" in raised.value.message


def test_request_id_crosses_the_call(client: TrainerClient) -> None:
    token = set_request_id("trace-42")
    try:
        reply = client._call(client.stub.ListDatasets, trainer_pb2.ListDatasetsRequest())
    finally:
        reset_request_id(token)
    assert reply.datasets[0].name == "trace-42"


def test_error_mid_stream_reaches_the_client(client: TrainerClient) -> None:
    stream = client.stub.WatchTraining(trainer_pb2.WatchTrainingRequest(job_id="j1"), timeout=5)
    first = next(stream)
    assert first.job_id == "j1"
    with pytest.raises(grpc.RpcError) as raised:
        next(stream)
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND


def test_health_follows_readiness_and_shutdown(server: GrpcServer, client: TrainerClient) -> None:
    stub = health_pb2_grpc.HealthStub(client.channel)
    check = health_pb2.HealthCheckRequest(service="sdstack.v1.Trainer")
    assert stub.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
    server.set_serving(True)
    assert client.is_serving()
    server.stop()
    assert not client.is_serving(timeout=1)


def test_reflection_lists_the_service(client: TrainerClient) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    reply = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in reply.list_services_response.service}
    assert {"sdstack.v1.Trainer", "grpc.health.v1.Health"} <= names


def test_calls_are_counted_by_status(client: TrainerClient) -> None:
    labels = {
        "grpc_service": "sdstack.v1.Trainer",
        "grpc_method": "EstimateTraining",
        "grpc_type": "unary",
        "grpc_code": "INVALID_ARGUMENT",
    }
    before = REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0
    with pytest.raises(RemoteError):
        client.estimate("alice", trainer_pb2.TrainingConfig())
    assert REGISTRY.get_sample_value("grpc_server_handled_total", labels) == before + 1


def test_port_taken_names_the_setting() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        settings = load_settings(trainer_port=port)
        server = GrpcServer(settings, port=port, port_setting="SDSTACK_TRAINER_PORT", bindings=[])
        with pytest.raises(ConfigError) as raised:
            server.start()
    assert raised.value.setting == "SDSTACK_TRAINER_PORT"
