"""Faults: a generator replica told to stop (SIGTERM) while it works finishes the job it
holds within its grace period and refuses new work; it then exits cleanly."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from services.common.clients import GeneratorClient
from services.common.errors import SdstackError
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2
from tests.stack_fixtures import RunningStack, start_generator

pytestmark = [pytest.mark.integration]


def _request(request_id: str, steps: int, n_iter: int = 1) -> generator_pb2.GenerateRequest:
    params = common_pb2.GenerationParams(
        prompt="a lighthouse", width=64, height=64, steps=steps, seed=5, n_iter=n_iter
    )
    return generator_pb2.GenerateRequest(
        mode=generator_pb2.GENERATION_MODE_TXT2IMG,
        request_id=request_id,
        owner="alice",
        params=params,
    )


def test_sigterm_finishes_the_job_in_flight_and_refuses_new_work(
    running_stack: RunningStack, tmp_path: Path
) -> None:
    replica = start_generator(running_stack, tmp_path, shutdown_grace_seconds=60)
    try:
        with GeneratorClient(replica.generator_target) as client:
            events = client.generate(_request("in-flight", steps=150, n_iter=4), timeout=120)
            for event in events:
                if event.HasField("progress"):
                    break  # the job is running
            replica.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            refused: list[str] = []

            def late() -> None:
                try:
                    client.generate_images(_request("too-late", steps=2), timeout=30)
                except SdstackError as error:
                    refused.append(error.status.name)

            caller = threading.Thread(target=late)
            caller.start()
            images = [e for e in events if e.HasField("result")]
            caller.join(60)
            assert len(images) == 1 and len(images[0].result.images) == 4
            assert refused == ["UNAVAILABLE"], refused
        started = time.monotonic()
        assert replica.process.wait(timeout=60) == 0
        assert time.monotonic() - started < 60
    finally:
        replica.stop(signal.SIGKILL)


def test_a_client_that_goes_away_mid_stream_cancels_its_job(running_stack: RunningStack) -> None:
    """Closing the Generate stream (a client that disconnects) cancels the job at once:
    watching it ends in CANCELLED long before its 2400 steps, and the generator is free."""
    with GeneratorClient(running_stack.settings.target("generator")) as client:
        events = client.generate(_request("goes-away", steps=150, n_iter=16), timeout=300)
        for event in events:
            if event.HasField("progress"):
                break
        started = time.monotonic()
        events.close()  # type: ignore[attr-defined]
        with pytest.raises(SdstackError) as ended:
            for _ in client.watch("goes-away", timeout=60):
                pass
        assert ended.value.status.name == "CANCELLED"
        assert time.monotonic() - started < 20
        images = client.generate_images(_request("next-one", steps=2), timeout=60)
        assert len(images) == 1
