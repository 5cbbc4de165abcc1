"""Faults: a generator replica told to stop (SIGTERM) while it works finishes the job it
holds within its grace period and refuses new work; it then exits cleanly. A client that
goes away cancels the job its request started (gRPC, SSE, or a plain waiting request), a
watcher that goes away cancels nothing. A generator killed (SIGKILL) mid-job behind the
gateway costs that job a clean 503, and serves again once restarted. A trainer killed
inside a save resumes from the last complete one."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from safetensors import safe_open

from gateway.generation import job_id
from services.common.clients import GeneratorClient, TrainerClient
from services.common.clients.channel import MAX_RECONNECT_BACKOFF_MS
from services.common.errors import SdstackError
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2, trainer_pb2
from services.common.sql import create_engine_for
from services.generator.demo_model import DEMO_MODEL_NAME
from services.trainer import state
from services.trainer.jobs import JobStore
from services.trainer.worker import training_dir
from tests.stack_fixtures import (
    ExtraProcess,
    RunningStack,
    restart,
    server_sent_events,
    start_gateway,
    start_generator,
    start_trainer,
)
from tests.trainer_support import dataset_zip

pytestmark = [pytest.mark.integration]

OWNER = "local"  # the gateway's one user when it has no API keys
LONG = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 150, "n_iter": 16}
SMALL = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 3}
CANCEL_WITHIN_S = 10.0
# A restarted replica is reached when the gateway's gRPC channel to it reconnects: its
# reconnect backoff grew while the replica was down, to at most MAX_RECONNECT_BACKOFF_MS.
RECOVERY_WITHIN_S = MAX_RECONNECT_BACKOFF_MS / 1000 + 20.0


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
            # 300 steps: well inside the grace period even on 2 busy CPU cores (600 were not)
            events = client.generate(_request("in-flight", steps=100, n_iter=3), timeout=120)
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
            assert len(images) == 1 and len(images[0].result.images) == 3
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


# -- the gateway: the request that started a job owns it ---------------------------------


def _outcome(target: str, request_id: str, timeout: float = 60) -> str:
    """How a job ended on its generator: OK or the gRPC status name (its Watch replays
    the job from the first event until the end)."""
    with GeneratorClient(target) as client:
        try:
            for _ in client.watch(job_id(OWNER, request_id), timeout=timeout):
                pass
        except SdstackError as error:
            return error.status.name
    return "OK"


def _wait_running(target: str, request_id: str, timeout: float = 60) -> None:
    """Returns once the job has made a step on the generator at `target`."""
    deadline = time.monotonic() + timeout
    with GeneratorClient(target) as client:
        while time.monotonic() < deadline:
            try:
                events = client.watch(job_id(OWNER, request_id), timeout=timeout)
                if any(event.HasField("progress") for event in events):
                    events.close()  # type: ignore[attr-defined]
                    return
            except SdstackError as error:
                if error.status.name != "NOT_FOUND":
                    raise
                time.sleep(0.1)  # the gateway has not placed it yet
    raise AssertionError(f"{request_id} did not start on {target}")


def _stored(http: httpx.Client, request_id: str) -> list[dict]:
    images = http.get("/v1/images", params={"limit": 100}).json()["images"]
    return [image for image in images if image["request_id"] == request_id]


def _post_and_keep_open(
    stack: RunningStack, path: str, body: dict, request_id: str
) -> socket.socket:
    """A raw HTTP request whose client can then vanish (its socket closed mid-wait)."""
    s = stack.settings
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {s.host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nx-request-id: {request_id}\r\n\r\n"
    )
    connection = socket.create_connection((s.host, s.gateway_port), timeout=30)
    connection.sendall(head.encode() + payload)
    return connection


def _assert_cancelled_and_free(stack: RunningStack, request_id: str, left_at: float) -> float:
    """The job ended CANCELLED on the generator soon after its client left, nothing of it
    is in the gallery, and the next generation works; returns how long the cancel took."""
    assert _outcome(stack.settings.target("generator"), request_id) == "CANCELLED"
    took = time.monotonic() - left_at
    assert took < CANCEL_WITHIN_S, took
    with stack.http() as http:
        kind, data = list(_sse(http, "GET", f"/v1/generations/{request_id}/events"))[-1]
        assert kind == "error" and data["error"]["code"] == "CANCELLED", data
        assert _stored(http, request_id) == []
        assert http.post("/v1/generations", json=SMALL).status_code == 200
    return took


def _sse(
    http: httpx.Client, method: str, path: str, **kwargs: object
) -> Iterator[tuple[str, dict]]:
    with http.stream(method, path, **kwargs) as response:  # type: ignore[arg-type]
        assert response.status_code == 200, response.read()
        yield from server_sent_events(response.iter_lines())


def test_a_client_that_leaves_its_event_stream_cancels_the_job(
    running_stack: RunningStack, record_property: Callable[[str, object], None]
) -> None:
    request_id = "sse-goes-away"
    with httpx.Client(base_url=running_stack.base_url, timeout=60) as http:
        headers = {"x-request-id": request_id}
        body = {**LONG, "stream": True}
        for kind, _ in _sse(http, "POST", "/v1/generations", json=body, headers=headers):
            if kind == "progress":
                break  # leaving the stream closes its connection
    took = _assert_cancelled_and_free(running_stack, request_id, time.monotonic())
    record_property("cancel_seconds", round(took, 3))


@pytest.mark.parametrize("path", ["/v1/generations", "/sdapi/v1/txt2img"])
def test_a_client_that_leaves_a_waiting_request_cancels_the_job(
    running_stack: RunningStack, path: str, record_property: Callable[[str, object], None]
) -> None:
    request_id = f"wait-goes-away-{path.rsplit('/', 1)[-1]}"
    connection = _post_and_keep_open(running_stack, path, {**LONG, "seed": 4}, request_id)
    _wait_running(running_stack.settings.target("generator"), request_id)
    connection.close()
    took = _assert_cancelled_and_free(running_stack, request_id, time.monotonic())
    record_property("cancel_seconds", round(took, 3))


def test_a_watcher_that_leaves_cancels_nothing(running_stack: RunningStack) -> None:
    request_id = "watched-and-left"
    body = {**LONG, "steps": 30, "n_iter": 1, "seed": 6, "stream": True}
    owned: list[tuple[str, dict]] = []

    def own() -> None:
        with running_stack.http() as http:
            headers = {"x-request-id": request_id}
            owned.extend(_sse(http, "POST", "/v1/generations", json=body, headers=headers))

    owner = threading.Thread(target=own)
    owner.start()
    _wait_running(running_stack.settings.target("generator"), request_id)
    with httpx.Client(base_url=running_stack.base_url, timeout=60) as watcher:
        for kind, _ in _sse(watcher, "GET", f"/v1/generations/{request_id}/events"):
            if kind == "progress":
                break  # the watcher leaves
    assert "result" not in [kind for kind, _ in owned]  # it left a running job
    owner.join(180)
    assert not owner.is_alive()
    assert owned[-1][0] == "result", owned[-1]
    with running_stack.http() as http:
        assert len(_stored(http, request_id)) == 1


# -- a generator replica killed mid-job ----------------------------------------------------


@dataclass
class WaitingCall:
    """A non-streaming generation through a gateway, answered in a thread."""

    gateway: ExtraProcess
    request_id: str
    body: dict
    response: httpx.Response | None = None
    thread: threading.Thread | None = None
    answered_at: float = 0.0

    def start(self) -> WaitingCall:
        self.thread = threading.Thread(target=self._call)
        self.thread.start()
        return self

    def _call(self) -> None:
        with self.gateway.http(**{"x-request-id": self.request_id}) as http:
            self.response = http.post("/v1/generations", json=self.body)
            self.answered_at = time.monotonic()

    def answer(self, timeout: float = 60) -> httpx.Response:
        assert self.thread is not None
        self.thread.join(timeout)
        assert self.response is not None, f"{self.request_id} got no answer"
        return self.response


def _holder(targets: list[str], request_id: str, timeout: float = 60) -> str:
    """The replica (of `targets`) that has the job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for target in targets:
            with GeneratorClient(target) as client:
                try:
                    events = client.watch(job_id(OWNER, request_id), timeout=timeout)
                    next(events)
                    events.close()  # type: ignore[attr-defined]
                    return target
                except SdstackError as error:
                    if error.status.name != "NOT_FOUND":
                        raise
        time.sleep(0.1)
    raise AssertionError(f"{request_id} reached no replica")


def _generate_ok(generator: ExtraProcess) -> int:
    """Generate calls this replica finished with OK, from its /metrics."""
    s = generator.settings
    text = httpx.get(f"http://{s.host}:{s.generator_metrics_port}/metrics").text
    pattern = (
        r'grpc_server_handled_total\{[^}]*grpc_code="OK"[^}]*grpc_method="Generate"[^}]*\} (\S+)'
    )
    return sum(int(float(value)) for value in re.findall(pattern, text))


def test_a_generator_killed_mid_job_fails_it_cleanly_and_serves_again_once_restarted(
    running_stack: RunningStack,
    tmp_path_factory: pytest.TempPathFactory,
    record_property: Callable[[str, object], None],
) -> None:
    """Replica A (killed) and the stack's generator B behind a gateway: the request whose
    job A held gets a JSON 503 at once, B serves the next ones, restarted A serves again."""
    doomed = start_generator(running_stack, tmp_path_factory.mktemp("doomed"))
    live = running_stack.settings.target("generator")
    gateway = start_gateway(
        running_stack,
        tmp_path_factory.mktemp("killed-replica-gateway"),
        generator_addrs=f"{doomed.generator_target},{live}",
        replica_retry_seconds=1,
    )
    calls: list[WaitingCall] = []
    try:
        victim = None
        for attempt in range(3):  # jobs go to the replicas in turn: one reaches A
            call = WaitingCall(gateway, f"killed-{attempt}", {**LONG, "seed": 10 + attempt})
            calls.append(call.start())
            if _holder([doomed.generator_target, live], call.request_id) == doomed.generator_target:
                victim = call
                break
        assert victim is not None, "no job reached replica A"
        _wait_running(doomed.generator_target, victim.request_id)
        killed_at = time.monotonic()
        doomed.stop(signal.SIGKILL)
        answer = victim.answer()
        assert answer.status_code == 503, answer.text
        error = answer.json()["error"]
        assert error["code"] == "UNAVAILABLE" and "failed mid-job" in error["message"], error
        record_property("error_message", error["message"])
        assert "Traceback" not in answer.text
        assert victim.answered_at - killed_at < CANCEL_WITHIN_S
        record_property("error_answered_seconds", round(victim.answered_at - killed_at, 3))
        with gateway.http() as http:
            for other in calls:  # jobs that went to B are cancelled, not waited for
                if other is not victim:
                    http.post(f"/v1/generations/{other.request_id}/cancel")
            for _ in range(3):  # A is skipped while down: nothing else fails
                assert http.post("/v1/generations", json=SMALL).status_code == 200
            doomed = restart(doomed)
            restarted_at = time.monotonic()
            while _generate_ok(doomed) == 0:  # until the restarted replica serves again
                assert time.monotonic() - restarted_at < RECOVERY_WITHIN_S, "A never came back"
                assert http.post("/v1/generations", json=SMALL).status_code == 200
            record_property("back_in_service_seconds", round(time.monotonic() - restarted_at, 1))
            assert http.get("/readyz").status_code == 200
        for other in calls:
            assert other.answer().status_code != 500
    finally:
        for process in (gateway, doomed):
            process.stop(signal.SIGKILL)


# -- a trainer killed inside a save ---------------------------------------------------------

SAVE_PAUSE_S = 1.5
TOTAL_STEPS = 4  # 4 pictures × 2 repeats / batch 2, one epoch; a state saved every step


def test_a_trainer_killed_mid_save_resumes_from_the_last_complete_save(
    running_stack: RunningStack, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """A trainer of its own (own SQL, the stack's store and generator) whose worker pauses
    between writing a saved state and committing it (the test hook of `state.save_state`):
    worker and trainer are SIGKILLed in that pause at the save of step 2. The uncommitted
    file is then cut to half its length, as a kill during the write would leave it. The
    restarted trainer resumes from the save of step 1, never reading that file, and the
    job ends with a whole LoRA."""
    trainer = start_trainer(
        running_stack,
        tmp_path,
        env={state.PAUSE_BEFORE_COMMIT_VARIABLE: str(SAVE_PAUSE_S)},
        database_url="",  # its own SQLite: the stack's trainer never runs this job
    )
    jobs = JobStore(create_engine_for(trainer.settings.resolved_database_url))
    try:
        with TrainerClient(trainer.trainer_target) as client:
            files = [("set.zip", dataset_zip(count=4))]
            dataset = client.create_dataset("alice", "killed-mid-save", files)
            config = trainer_pb2.TrainingConfig(
                dataset_id=dataset.id,
                base_model=DEMO_MODEL_NAME,
                output_name="killed-mid-save",
                network_dim=4,
                network_alpha=4,
                learning_rate=1e-2,
                lr_scheduler="constant",
                epochs=1,
                batch_size=2,
                resolution=64,
                seed=3,
                save_state_every_n_steps=1,
            )
            job = client.start_training("alice", config)
            folder = training_dir(trainer.settings, job.id) / "state"
            leftover = _wait_uncommitted_save(folder, step=2)
            worker = int(jobs.find(job.id).worker.removeprefix("pid:"))
            trainer.stop(signal.SIGKILL)  # first, so that it cannot start the job again
            os.kill(worker, signal.SIGKILL)
            killed_at = time.monotonic()
            assert state.saved_steps(folder) == [1]  # the save of step 2 never committed
            leftover.write_bytes(leftover.read_bytes()[: leftover.stat().st_size // 2])
            trainer = restart(trainer)
            final = _wait_final(client, job.id)
            record_property("restart_to_succeeded_seconds", round(time.monotonic() - killed_at, 1))
        assert final.state == trainer_pb2.TRAINING_STATE_SUCCEEDED, final.error
        assert final.attempts == 2 and final.resumed_from_step == 1
        assert final.step == TOTAL_STEPS
        _assert_whole_lora(running_stack, tmp_path, "killed-mid-save", TOTAL_STEPS)
    finally:
        trainer.stop(signal.SIGKILL)


def _wait_uncommitted_save(folder: Path, step: int, timeout: float = 180) -> Path:
    """The temporary file of the save of `step`, once it is written (not yet committed)."""
    prefix = f".{state.state_path(folder, step).name}."
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        written = [p for p in _files(folder) if p.name.startswith(prefix)]
        if written:
            return written[0]
        time.sleep(0.05)
    raise AssertionError(f"the save of step {step} did not begin")


def _files(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.is_dir() else []


def _wait_final(
    client: TrainerClient, job_id_: str, timeout: float = 240
) -> trainer_pb2.TrainingJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_training("alice", job_id_)
        if job.state in (
            trainer_pb2.TRAINING_STATE_SUCCEEDED,
            trainer_pb2.TRAINING_STATE_FAILED,
            trainer_pb2.TRAINING_STATE_CANCELLED,
        ):
            return job
        time.sleep(0.3)
    raise AssertionError(f"training {job_id_} did not end")


def _assert_whole_lora(stack: RunningStack, tmp_path: Path, name: str, steps: int) -> None:
    with GeneratorClient(stack.settings.target("generator")) as generator:
        listed = generator.list_models(common_pb2.MODEL_KIND_LORA).models
    lora = next(m for m in listed if m.name == name)
    stored = tmp_path / f"{name}.safetensors"
    stack.object_store().download("loras", lora.object_key, stored)
    with safe_open(str(stored), "pt") as opened:
        assert opened.metadata()["ss_steps"] == str(steps)
        assert any(key.startswith("lora_unet_") for key in opened.keys())  # noqa: SIM118
