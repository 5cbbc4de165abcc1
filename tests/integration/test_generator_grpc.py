"""The generator's gRPC API as another service sees it: streaming, cancel, disconnect."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from services.common.clients import GeneratorClient
from services.common.errors import RemoteError
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2
from tests.stack_fixtures import RunningStack

pytestmark = [pytest.mark.integration]


def _long_request(request_id: str) -> generator_pb2.GenerateRequest:
    params = common_pb2.GenerationParams(prompt="x", seed=9, width=256, height=256, steps=150)
    return generator_pb2.GenerateRequest(request_id=request_id, params=params)


@pytest.fixture
def generator(running_stack: RunningStack) -> GeneratorClient:
    with GeneratorClient(running_stack.settings.target("generator")) as client:
        yield client


def _first_progress(stream: grpc.Call) -> generator_pb2.GenerateEvent:
    for event in stream:
        if event.HasField("progress"):
            return event
    raise AssertionError("no progress event")


def test_stream_reports_queue_then_steps_then_images(generator: GeneratorClient) -> None:
    params = common_pb2.GenerationParams(prompt="x", seed=3, width=64, height=64, steps=3)
    request = generator_pb2.GenerateRequest(request_id="stream-1", params=params)
    events = list(generator.generate(request))
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds == ["queued", "progress", "progress", "progress", "result"]
    steps = [e.progress.step for e in events if e.HasField("progress")]
    assert steps == [1, 2, 3]
    assert events[-2].progress.progress == pytest.approx(1.0)
    assert {e.request_id for e in events} == {"stream-1"}
    (image,) = events[-1].result.images
    assert image.seed == 3 and image.png.startswith(b"\x89PNG")


def test_cancel_by_request_id_ends_the_stream(generator: GeneratorClient) -> None:
    stream = generator.stub.Generate(_long_request("to-cancel"), timeout=120)
    _first_progress(stream)
    assert generator.cancel("to-cancel")
    with pytest.raises(grpc.RpcError) as raised:
        list(stream)
    assert raised.value.code() is grpc.StatusCode.CANCELLED
    assert "cancelled" in raised.value.details()


def test_client_disconnect_cancels_the_job(generator: GeneratorClient) -> None:
    stream = generator.stub.Generate(_long_request("walks-away"), timeout=120)
    _first_progress(stream)
    stream.cancel()
    watch = generator.stub.WatchGeneration(
        generator_pb2.WatchGenerationRequest(request_id="walks-away"), timeout=60
    )
    with pytest.raises(grpc.RpcError) as raised:
        list(watch)
    assert raised.value.code() is grpc.StatusCode.CANCELLED


def test_a_watcher_sees_the_whole_job(generator: GeneratorClient) -> None:
    params = common_pb2.GenerationParams(prompt="x", seed=4, width=64, height=64, steps=20)
    request = generator_pb2.GenerateRequest(request_id="watched", params=params)
    results: list[generator_pb2.GenerateEvent] = []
    runner = threading.Thread(target=lambda: results.extend(generator.generate(request)))
    runner.start()
    watched = []
    for _ in range(100):
        try:
            watched = list(
                generator.stub.WatchGeneration(
                    generator_pb2.WatchGenerationRequest(request_id="watched"), timeout=60
                )
            )
            break
        except grpc.RpcError as error:
            assert error.code() is grpc.StatusCode.NOT_FOUND
            time.sleep(0.05)
    runner.join(60)
    assert [e.WhichOneof("event") for e in watched] == [e.WhichOneof("event") for e in results]
    assert watched[-1].result.images[0].png == results[-1].result.images[0].png


def test_unknown_model_is_not_found(generator: GeneratorClient) -> None:
    request = generator_pb2.GenerateRequest(params=common_pb2.GenerationParams(model="missing"))
    with pytest.raises(RemoteError) as raised:
        list(generator.generate(request))
    assert raised.value.status is grpc.StatusCode.NOT_FOUND
    assert "missing" in raised.value.message


def test_samplers_are_listed_by_a1111_name(generator: GeneratorClient) -> None:
    names = {sampler.name for sampler in generator.list_samplers()}
    assert {"Euler a", "DPM++ 2M Karras", "DDIM", "UniPC"} <= names
