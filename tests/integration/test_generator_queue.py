"""A generator running one job at a time with a queue of one: beyond it, clients are told to
come back later."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from services.common.clients import GeneratorClient
from services.common.config import settings_env
from services.common.errors import RemoteError
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2
from services.common.s3_server import LocalS3Server
from tests.s3_fixtures import ACCESS_KEY, SECRET_KEY
from tests.stack_fixtures import stack_settings

pytestmark = [pytest.mark.integration]


@pytest.fixture
def small_queue_generator(
    tmp_path: Path, clip_tokenizer_dir: Path, local_s3: LocalS3Server
) -> Iterator[GeneratorClient]:
    settings = stack_settings(
        tmp_path,
        clip_tokenizer_dir,
        s3_endpoint=local_s3.endpoint,
        s3_access_key=ACCESS_KEY,
        s3_secret_key=SECRET_KEY,
        queue_size=1,
        max_batch_images=1,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "services.generator.server"],
        env={**os.environ, **settings_env(settings)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = GeneratorClient(settings.target("generator"), timeout=60)
    try:
        deadline = time.monotonic() + 120
        while not client.is_serving():
            assert process.poll() is None, "the generator exited during start-up"
            assert time.monotonic() < deadline, "the generator did not become ready"
            time.sleep(0.3)
        yield client
    finally:
        client.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def _long(request_id: str) -> generator_pb2.GenerateRequest:
    params = common_pb2.GenerationParams(prompt="x", seed=1, width=256, height=256, steps=150)
    return generator_pb2.GenerateRequest(request_id=request_id, params=params)


def test_a_full_queue_answers_resource_exhausted_with_a_hint(
    small_queue_generator: GeneratorClient,
) -> None:
    client = small_queue_generator
    running = client.stub.Generate(_long("running"), timeout=120)
    next(e for e in running if e.HasField("progress"))
    waiting = client.stub.Generate(_long("waiting"), timeout=120)
    assert next(waiting).HasField("queued")
    with pytest.raises(RemoteError) as raised:
        client.generate_images(_long("refused"))
    assert raised.value.status is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.retry_after_seconds is not None
    assert raised.value.retry_after_seconds >= 1
    assert "queue is full" in raised.value.message
    outcomes: list[grpc.StatusCode] = []
    drain = threading.Thread(target=lambda: outcomes.append(_end_code(waiting)))
    drain.start()
    assert client.cancel("running") and client.cancel("waiting")
    drain.join(60)
    assert _end_code(running) is grpc.StatusCode.CANCELLED
    assert outcomes == [grpc.StatusCode.CANCELLED]
    assert client.is_serving()


def _end_code(stream: grpc.Call) -> grpc.StatusCode:
    try:
        for _ in stream:
            pass
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK
