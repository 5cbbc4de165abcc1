"""Two generator replicas behind one gateway (SDSTACK_GENERATOR_ADDRS): jobs are shared,
cancel and events reach the replica running the job (also from a gateway that did not
place it), and a replica killed mid-run costs only the jobs it held."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.stack_fixtures import (
    ExtraProcess,
    RunningStack,
    server_sent_events,
    start_gateway,
    start_generator,
)

pytestmark = [pytest.mark.integration]

SMALL = {"prompt": "a courtyard", "seed": 8, "width": 64, "height": 64, "steps": 3}
LONG = {"prompt": "a courtyard", "seed": 9, "width": 192, "height": 192, "steps": 80}


@dataclass
class Replicated:
    generators: list[ExtraProcess]
    gateway: ExtraProcess
    addresses: str


@pytest.fixture(scope="module")
def replicated(
    running_stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicated]:
    generators: list[ExtraProcess] = []
    gateway = None
    try:
        for name in ("replica-a", "replica-b"):
            generators.append(start_generator(running_stack, tmp_path_factory.mktemp(name)))
        addresses = ",".join(g.generator_target for g in generators)
        gateway = start_gateway(
            running_stack,
            tmp_path_factory.mktemp("replicated-gateway"),
            generator_addrs=addresses,
            replica_retry_seconds=30,
        )
        yield Replicated(generators, gateway, addresses)
    finally:
        for process in [gateway, *generators]:
            if process is not None:
                process.stop()


def _generate_ok(generator: ExtraProcess) -> int:
    """Generate calls this replica finished with OK, from its /metrics."""
    s = generator.settings
    text = httpx.get(f"http://{s.host}:{s.generator_metrics_port}/metrics").text
    pattern = (
        r'grpc_server_handled_total\{[^}]*grpc_code="OK"[^}]*grpc_method="Generate"[^}]*\} (\S+)'
    )
    return sum(int(float(value)) for value in re.findall(pattern, text))


@dataclass
class StreamedJob:
    """A streaming generation followed in a thread."""

    http: httpx.Client
    body: dict
    request_id: str
    path: str = "/v1/generations"
    events: list[tuple[str, dict]] = field(default_factory=list)
    running: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> StreamedJob:
        self.thread = threading.Thread(target=self._follow)
        self.thread.start()
        return self

    def _follow(self) -> None:
        headers = {"x-request-id": self.request_id}
        method = "POST" if self.path == "/v1/generations" else "GET"
        body = {**self.body, "stream": True} if method == "POST" else None
        with self.http.stream(method, self.path, json=body, headers=headers) as response:
            for event in server_sent_events(response.iter_lines()):
                self.events.append(event)
                if event[0] == "progress":
                    self.running.set()

    def outcome(self, timeout: float = 180) -> tuple[str, dict]:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.request_id} did not end"
        return self.events[-1]


def test_jobs_are_shared_between_replicas(replicated: Replicated) -> None:
    before = [_generate_ok(g) for g in replicated.generators]
    results: list[int] = []

    def one() -> None:
        with replicated.gateway.http() as http:
            results.append(http.post("/v1/generations", json=SMALL).status_code)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == [200] * 4
    after = [_generate_ok(g) for g in replicated.generators]
    done = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(done) == 4 and min(done) >= 1, done  # round robin: both replicas worked


def test_cancel_and_events_reach_the_replica_running_the_job(
    running_stack: RunningStack,
    replicated: Replicated,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    other = start_gateway(
        running_stack,
        tmp_path_factory.mktemp("other-gateway"),
        generator_addrs=replicated.addresses,
    )
    try:
        with replicated.gateway.http() as http, other.http() as elsewhere:
            first = StreamedJob(http, LONG, "replicated-1").start()
            second = StreamedJob(http, LONG, "replicated-2").start()
            assert first.running.wait(120) and second.running.wait(120)
            # The other gateway never saw these jobs: it finds them on the replicas.
            watcher = StreamedJob(
                elsewhere, {}, "watch", path="/v1/generations/replicated-2/events"
            ).start()
            assert watcher.running.wait(60)
            assert http.post("/v1/generations/replicated-1/cancel").json()["cancelled"]
            assert elsewhere.post("/v1/generations/replicated-2/cancel").json()["cancelled"]
            for job in (first, second, watcher):
                kind, data = job.outcome(60)
                assert kind == "error" and data["error"]["code"] == "CANCELLED", job.events[-1]
    finally:
        other.stop()


def test_a_killed_replica_costs_only_the_jobs_it_held(replicated: Replicated) -> None:
    with replicated.gateway.http() as http:
        jobs = [StreamedJob(http, LONG, f"doomed-{i}").start() for i in range(4)]
        deadline = time.monotonic() + 120
        while sum(job.running.is_set() for job in jobs) < 2:  # one running on each replica
            assert time.monotonic() < deadline, "the replicas did not both start a job"
            time.sleep(0.1)
        replicated.generators[1].stop(signal.SIGKILL)
        outcomes = [job.outcome() for job in jobs]
        failed = [data for kind, data in outcomes if kind == "error"]
        assert 1 <= len(failed) <= 2, outcomes  # replica b held two of the four jobs
        assert {f["error"]["code"] for f in failed} == {"UNAVAILABLE"}
        assert sum(kind == "result" for kind, _ in outcomes) == 4 - len(failed)
        # The dead replica is skipped from now on: nothing else fails.
        for _ in range(3):
            assert http.post("/v1/generations", json=SMALL).status_code == 200
        assert http.get("/readyz").status_code == 200
