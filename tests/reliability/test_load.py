"""Load: sustained concurrency far beyond the generator's capacity.

A generator replica with a queue of 4 serves a gateway of its own (no rate limit, so every
refusal is the generator's RESOURCE_EXHAUSTED). Bounded asyncio clients (httpx) post tiny
generations (64×64, 2 steps) to `/v1/generations` and `/sdapi/v1/txt2img` for a fixed time.
A refused client waits a short random pause (up to 0.25 s, less than the Retry-After it is
given) and tries again, so the pressure stays on. What must hold:

- every answer is 200 or 429: no 5xx, no timeout, no broken connection;
- every 429 carries `Retry-After` (whole seconds ≥ 1), and refusals are fast: the typical
  one takes less than half the typical admitted request, and even the slowest is inside the
  bound below;
- admitted latency is bounded. At most `queue + 2` jobs are ahead of or beside an admitted
  one, each taking the single-request latency measured alone (the median of requests sent
  one at a time before and after the load). Under load the clients, the gateway and the
  generator share the machine's cores: with N requests in flight on C cores, processor
  sharing slows each by up to N / C. So: latency ≤ (queue + 2) × single × max(2, N / C) + 1 s;
- over minutes (heavy tier) it does not drift: the median of the last third of the run is
  within 3 × the first third's (plus one queue's worth of work);
- afterwards the stack is healthy and admits a generation at once.

Two tiers: a light one (16 clients, 8 s) in `make test`; a heavy one (64 clients, 3 min)
marked `slow`, which writes its figures to `bench/RESULTS.md`.
"""

from __future__ import annotations

import asyncio
import os
import platform
import random
import re
import socket
import statistics
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.stack_fixtures import ExtraProcess, RunningStack, start_gateway, start_generator

pytestmark = [pytest.mark.integration]

QUEUE_SIZE = 4
# Admitted work ahead of or beside a request: the running job, the queue, its own job.
JOBS_AHEAD = QUEUE_SIZE + 2
ENDPOINTS = ("/v1/generations", "/sdapi/v1/txt2img")
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "RESULTS.md"
SECTION = "## Reliability: load and soak"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def body(path: str, n: int) -> dict:
    """A tiny generation; both APIs take these fields under the same names."""
    return {
        "prompt": f"a lighthouse in the fog {n}",
        "seed": n,
        "width": 64,
        "height": 64,
        "steps": 2,
    }


@dataclass
class Outcome:
    path: str
    status: int  # 0: no HTTP answer (timeout or connection error)
    seconds: float
    started: float  # since the load began
    retry_after: str | None = None
    error: str = ""


@dataclass
class LoadReport:
    clients: int
    duration: float
    single_before: list[float]
    single_after: list[float] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def single_seconds(self) -> float:
        return statistics.median([*self.single_before, *self.single_after])

    @property
    def contention(self) -> float:
        return max(2.0, self.clients / cores())

    @property
    def bound(self) -> float:
        """The most an admitted request may take (see the module's docstring)."""
        return JOBS_AHEAD * self.single_seconds * self.contention + 1.0

    def of(self, status: int, path: str | None = None) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status and path in (None, o.path)]

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status not in (200, 429)]

    def latency(self, status: int, q: float) -> float:
        return quantile([o.seconds for o in self.of(status)], q)


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- the stack under load ------------------------------------------------------------------


@dataclass
class Overloadable:
    generator: ExtraProcess
    gateway: ExtraProcess


@pytest.fixture(scope="module")
def overloadable(
    running_stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Overloadable]:
    generator = start_generator(
        running_stack, tmp_path_factory.mktemp("load-generator"), queue_size=QUEUE_SIZE
    )
    try:
        gateway = start_gateway(
            running_stack,
            tmp_path_factory.mktemp("load-gateway"),
            generator_target=generator.generator_target,
            rate_limit_per_minute=0,
        )
        try:
            yield Overloadable(generator, gateway)
        finally:
            gateway.stop()
    finally:
        generator.stop()


def single_request_seconds(base_url: str, warm_up: bool) -> list[float]:
    """Latencies of generations sent one at a time, on both endpoints."""
    seconds = []
    with httpx.Client(base_url=base_url, timeout=120) as client:
        if warm_up:
            for n, path in enumerate(ENDPOINTS):
                assert client.post(path, json=body(path, n)).status_code == 200
        for n, path in enumerate([*ENDPOINTS, *ENDPOINTS]):
            started = time.perf_counter()
            response = client.post(path, json=body(path, n))
            assert response.status_code == 200, response.text  # admitted at once
            seconds.append(time.perf_counter() - started)
    return seconds


async def _client(
    http: httpx.AsyncClient,
    path: str,
    began: float,
    until: float,
    outcomes: list[Outcome],
    seed: int,
) -> None:
    pause = random.Random(seed)
    n = seed * 100_000
    while time.monotonic() < until:
        n += 1
        started = time.perf_counter()
        since = time.monotonic() - began
        try:
            response = await http.post(path, json=body(path, n))
        except httpx.HTTPError as error:
            elapsed = time.perf_counter() - started
            outcomes.append(Outcome(path, 0, elapsed, since, error=type(error).__name__))
            continue
        elapsed = time.perf_counter() - started
        outcome = Outcome(
            path, response.status_code, elapsed, since, response.headers.get("retry-after")
        )
        if response.status_code not in (200, 429):
            outcome.error = response.text[:300]
        outcomes.append(outcome)
        if response.status_code == 429:
            await asyncio.sleep(pause.uniform(0, 0.25))


async def _load(base_url: str, clients: int, duration: float, timeout: float) -> list[Outcome]:
    outcomes: list[Outcome] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as http:
        began = time.monotonic()
        until = began + duration
        await asyncio.gather(
            *(
                _client(http, ENDPOINTS[i % len(ENDPOINTS)], began, until, outcomes, i)
                for i in range(clients)
            )
        )
    return outcomes


def run_load(stack: Overloadable, clients: int, duration: float) -> LoadReport:
    url = stack.gateway.base_url
    report = LoadReport(clients, duration, single_request_seconds(url, warm_up=True))
    # The clients' timeout is far past the bound: a slow answer is measured, not cut short.
    # Their event loop runs in a thread of its own: a test before this one (Playwright's
    # sync API) may leave an event loop set on this thread, where asyncio.run refuses.
    load = _load(url, clients, duration, timeout=report.bound * 3)
    with ThreadPoolExecutor(1) as loop_thread:
        report.outcomes = loop_thread.submit(asyncio.run, load).result()
    report.load_average = os.getloadavg()
    with stack.gateway.http() as client:
        assert client.get("/readyz").status_code == 200
    report.single_after = single_request_seconds(url, warm_up=False)  # the queue drained
    return report


def check_report(report: LoadReport, drift: bool) -> None:
    failures = report.failures
    assert not failures, [(o.path, o.status, o.error) for o in failures[:10]]
    for path in ENDPOINTS:
        assert report.of(200, path), f"nothing admitted on {path}"
        refused = report.of(429, path)
        assert refused, f"no 429 on {path}: the load did not exceed the queue"
        for outcome in refused:
            assert outcome.retry_after is not None, f"429 without Retry-After on {path}"
            assert re.fullmatch(r"[1-9]\d*", outcome.retry_after), outcome.retry_after
    assert report.latency(429, 0.5) < report.latency(200, 0.5) / 2, summary(report)
    assert report.latency(429, 1.0) < report.bound, summary(report)
    slowest = report.latency(200, 1.0)
    assert slowest < report.bound, f"slowest admitted {slowest:.2f}s; " + summary(report)
    if drift:
        admitted = report.of(200)
        third = report.duration / 3
        first = statistics.median(o.seconds for o in admitted if o.started < third)
        last = statistics.median(o.seconds for o in admitted if o.started >= 2 * third)
        allowed = 3 * first + JOBS_AHEAD * report.single_seconds
        assert last < allowed, f"admitted latency drifts: {first:.2f}s → {last:.2f}s"


def summary(report: LoadReport) -> str:
    admitted, refused = report.of(200), report.of(429)
    return (
        f"{report.clients} clients for {report.duration:.0f}s: {len(report.outcomes)} requests, "
        f"{len(admitted)} admitted (p50 {report.latency(200, 0.5):.2f}s, "
        f"p99 {report.latency(200, 0.99):.2f}s, max {report.latency(200, 1.0):.2f}s), "
        f"{len(refused)} refused with 429 (p50 {report.latency(429, 0.5) * 1000:.0f} ms, "
        f"p99 {report.latency(429, 0.99) * 1000:.0f} ms), single request "
        f"{statistics.median(report.single_before):.2f}s before, "
        f"{statistics.median(report.single_after):.2f}s after, "
        f"bound {report.bound:.1f}s, load average {report.load_average[0]:.1f}"
    )


def test_overload_gets_fast_429_with_retry_after_and_admitted_latency_stays_bounded(
    overloadable: Overloadable,
) -> None:
    report = run_load(overloadable, clients=16, duration=8)
    print(summary(report))  # noqa: T201
    check_report(report, drift=False)


def _get_on(connection: socket.socket, host: str) -> bytes:
    """One keep-alive GET of /healthz on an open connection; the answer's status line."""
    connection.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = connection.recv(4096)
        if not chunk:
            return b"(connection closed by the gateway)"
        answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: *(\d+)", head, re.IGNORECASE).group(1))
    while len(rest) < length:
        rest += connection.recv(4096)
    return head.split(b"\r\n", 1)[0]


def test_an_idle_connection_outlives_the_clients_own_keep_alive_expiry(
    overloadable: Overloadable,
) -> None:
    """httpx drops an idle pooled connection after 5 s; if the gateway closed it at the same
    moment, a request sent on it would get no answer (the heavy tier's dropped connections).
    So the gateway must keep an idle connection open past that."""
    settings = overloadable.gateway.settings
    host = f"{settings.host}:{settings.gateway_port}"
    with socket.create_connection((settings.host, settings.gateway_port), timeout=30) as conn:
        assert _get_on(conn, host).endswith(b"200 OK")
        time.sleep(httpx.Limits().keepalive_expiry + 1)
        assert _get_on(conn, host).endswith(b"200 OK")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_heavy_sustained_overload_for_minutes(overloadable: Overloadable) -> None:
    report = run_load(overloadable, clients=64, duration=180)
    print(summary(report))  # noqa: T201
    write_results("Load", load_lines(report))
    check_report(report, drift=True)


def load_lines(report: LoadReport) -> list[str]:
    admitted, refused = report.of(200), report.of(429)
    fivexx = [o for o in report.outcomes if o.status >= 500]
    no_answer = [o for o in report.outcomes if o.status == 0]
    others = len(report.outcomes) - len(admitted) - len(refused) - len(fivexx) - len(no_answer)
    with_header = sum(1 for o in refused if o.retry_after)
    return [
        "`tests/reliability/test_load.py::test_heavy_sustained_overload_for_minutes`: a generator "
        f"with a queue of {QUEUE_SIZE}, tiny demo model, 64×64, 2 steps; its own gateway with no "
        "rate limit; clients alternate `/v1/generations` and `/sdapi/v1/txt2img`, a refused "
        "client pauses 0–0.25 s and retries. Load average of the machine at the end: "
        f"{report.load_average[0]:.1f} (other work shares it).",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| clients | {report.clients} |",
        f"| duration | {report.duration:.0f} s |",
        f"| requests | {len(report.outcomes)} ({len(report.outcomes) / report.duration:.0f}/s) |",
        f"| admitted (200) | {len(admitted)} ({len(admitted) / report.duration:.1f}/s) |",
        f"| refused (429) | {len(refused)}, {with_header} with Retry-After |",
        f"| 5xx | {len(fivexx)} |",
        f"| timeouts / connection errors | {len(no_answer)} |",
        f"| other statuses | {others} |",
        f"| single request alone (median before / after / both) | "
        f"{statistics.median(report.single_before) * 1000:.0f} ms / "
        f"{statistics.median(report.single_after) * 1000:.0f} ms / "
        f"{report.single_seconds * 1000:.0f} ms |",
        f"| admitted latency p50 / p99 / max | {report.latency(200, 0.5):.2f} s / "
        f"{report.latency(200, 0.99):.2f} s / {report.latency(200, 1.0):.2f} s |",
        f"| bound asserted on admitted latency | {report.bound:.1f} s ({JOBS_AHEAD} jobs × "
        f"single × {report.contention:g} + 1 s) |",
        f"| 429 latency p50 / p99 / max | {report.latency(429, 0.5) * 1000:.0f} ms / "
        f"{report.latency(429, 0.99) * 1000:.0f} ms / {report.latency(429, 1.0) * 1000:.0f} ms |",
    ]


# -- bench/RESULTS.md ----------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cores()} CPU cores ({cpu}), CPU torch"


def write_results(name: str, lines: list[str]) -> None:
    """Replaces the `### {name}` part of the load-and-soak section of bench/RESULTS.md (the
    section is added at the end if absent); the rest of the file is left as it is."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    prose = [f"Last run {stamp} on {machine()}.", "", *lines]
    wrapped = [line if line.startswith("|") else textwrap.fill(line, 92) for line in prose]
    part = "\n".join([f"### {name}", "", *wrapped]).rstrip()
    text = RESULTS.read_text() if RESULTS.exists() else "# Results\n"
    start = text.find(f"\n{SECTION}\n")
    if start < 0:
        intro = textwrap.fill(
            "Written by `make test-slow` (`tests/reliability/test_load.py` and "
            "`test_soak.py`): each keeps its last run here.",
            92,
        )
        text = f"{text.rstrip()}\n\n{SECTION}\n\n{intro}\n"
        start = text.find(f"\n{SECTION}\n")
    body_start = start + len(SECTION) + 2
    end = text.find("\n## ", body_start)
    end = len(text) if end < 0 else end
    section = text[body_start:end]
    parts = re.split(r"(?m)^(?=### )", section)
    kept = [p for p in parts if not p.startswith(f"### {name}\n")]
    head, others = kept[0], [p.rstrip() for p in kept[1:]]
    parts_out = sorted([*others, part], key=lambda p: p.split("\n", 1)[0])
    new_section = "\n\n".join([head.rstrip(), *parts_out]) + "\n"
    rest = text[end:]
    RESULTS.write_text(
        text[:body_start] + new_section + (("\n" + rest.lstrip("\n")) if rest else "")
    )
