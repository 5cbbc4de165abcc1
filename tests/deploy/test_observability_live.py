"""A real Prometheus (the system package) scraping a real local stack.

The scrape configuration is deploy/prometheus/prometheus.yml made local by
scripts/prometheus_local_config.py: the same jobs, metrics paths, relabel rules and alert
rules, with static targets on the stack's ports. Prometheus listens on 127.0.0.1 only and
is stopped when the module ends. The checks ask Prometheus's HTTP API, as Grafana and the
HPA's adapter would: every service is up and its own series are stored, the alert rules
load, every dashboard query and the adapter's query are valid PromQL that finds data.
GPU series are expected exactly when NVML sees a GPU on this machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import httpx
import pytest
import yaml

from sdstack.launcher import free_ports
from services.common.proto.sdstack.v1 import trainer_pb2, trainer_pb2_grpc
from tests.deploy.manifests import DEPLOY, REPO, tool
from tests.stack_fixtures import RunningStack

pytestmark = [pytest.mark.integration]

SERVICES = ("gateway", "generator", "trainer", "gallery")
WAIT_SECONDS = 60.0


def _load_local_config_module() -> ModuleType:
    path = REPO / "scripts" / "prometheus_local_config.py"
    spec = importlib.util.spec_from_file_location("prometheus_local_config", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Prometheus:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def query(self, promql: str) -> list[dict[str, Any]]:
        reply = self.http.get("/api/v1/query", params={"query": promql}).json()
        assert reply["status"] == "success", f"{promql}: {reply.get('error')}"
        return reply["data"]["result"]

    def wait_for(self, promql: str, what: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            result = self.query(promql)
            if result:
                return result
            if time.monotonic() > deadline:
                targets = self.http.get("/api/v1/targets").json()["data"]["activeTargets"]
                health = {t["labels"].get("job"): (t["health"], t["lastError"]) for t in targets}
                pytest.fail(f"{what}: nothing for {promql} after {WAIT_SECONDS}s; {health}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def prometheus(running_stack: RunningStack) -> Iterator[Prometheus]:
    config_module = _load_local_config_module()
    config = config_module.local_config(running_stack.settings, scrape_interval="1s")
    [port] = free_ports(1)
    with tempfile.TemporaryDirectory(prefix="prometheus-") as workdir:
        config_file = Path(workdir) / "prometheus.yml"
        config_file.write_text(config_module.dump(config))
        check = subprocess.run(
            [tool("promtool"), "check", "config", str(config_file)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        log = (Path(workdir) / "prometheus.log").open("w")
        process = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir}/data",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        try:
            server = Prometheus(port)
            deadline = time.monotonic() + WAIT_SECONDS
            while True:
                assert process.poll() is None, (Path(workdir) / "prometheus.log").read_text()
                try:
                    if server.http.get("/-/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "Prometheus never became ready"
                time.sleep(0.2)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


@pytest.fixture(scope="module")
def traffic(running_stack: RunningStack, prometheus: Prometheus) -> None:
    """One generation (gateway → generator → gallery), a gallery listing, a trainer call."""
    with running_stack.http() as http:
        made = http.post(
            "/v1/generations",
            json={"prompt": "a reading nook", "seed": 1, "width": 64, "height": 64, "steps": 2},
        )
        assert made.status_code == 200, made.text
        assert http.get("/v1/images").status_code == 200
    with grpc.insecure_channel(running_stack.settings.target("trainer")) as channel:
        try:  # whether implemented yet or not, the call is counted by the interceptor
            trainer_pb2_grpc.TrainerStub(channel).ListDatasets(
                trainer_pb2.ListDatasetsRequest(), timeout=10
            )
        except grpc.RpcError as error:  # answered (even with an error), so it was counted
            assert error.code() is not grpc.StatusCode.UNAVAILABLE, error


def test_every_service_is_scraped_through_the_deploy_relabelling(
    prometheus: Prometheus,
) -> None:
    for service in SERVICES:
        [up] = prometheus.wait_for(f'up{{job="sdstack-{service}"}} == 1', service)
        labels = up["metric"]
        # namespace, pod and node come from the cluster's relabel rules, run unchanged
        assert labels["namespace"] == "local"
        assert labels["pod"] == f"{service}-local"
        assert labels["node"]
        assert not any(name.startswith("__meta") for name in labels)


def test_each_service_exports_its_own_series(prometheus: Prometheus, traffic: None) -> None:
    own = {
        "gateway": 'http_requests_total{job="sdstack-gateway", route="/v1/generations"}',
        "generator": 'sdstack_images_generated_total{job="sdstack-generator"}',
        "trainer": 'grpc_server_handled_total{job="sdstack-trainer", grpc_service=~".*Trainer"}',
        "gallery": 'grpc_server_handled_total{job="sdstack-gallery", grpc_service=~".*Gallery"}',
    }
    for service, series in own.items():
        prometheus.wait_for(series, service)
    prometheus.wait_for('sdstack_generator_queue_depth{job="sdstack-generator"}', "queue depth")
    prometheus.wait_for('sdstack_seconds_per_step_count{job="sdstack-generator"} > 0', "steps")


def _gpu_count() -> int:
    """GPUs NVML sees here, asked directly, in a separate process."""
    probe = (
        "import pynvml\n"
        "try:\n    pynvml.nvmlInit()\nexcept pynvml.NVMLError:\n    print(0)\n"
        "else:\n    print(pynvml.nvmlDeviceGetCount())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return int(result.stdout.strip())


def test_gpu_series_exist_exactly_where_a_gpu_does(prometheus: Prometheus) -> None:
    for service in ("generator", "trainer"):
        prometheus.wait_for(f'up{{job="sdstack-{service}"}} == 1', service)
    time.sleep(1.5)  # a scrape after both answered
    gpus = _gpu_count()
    for service in ("generator", "trainer"):
        for series in ("sdstack_gpu_memory_used_bytes", "sdstack_gpu_utilization_ratio"):
            found = prometheus.query(f'{series}{{job="sdstack-{service}"}}')
            assert len(found) == gpus, (service, series, found)
    if gpus:
        [total] = prometheus.query(
            'sdstack_gpu_memory_total_bytes{job="sdstack-generator", gpu="0"}'
        )
        assert float(total["value"][1]) > 2**30


def test_the_alert_rules_load_and_evaluate(prometheus: Prometheus) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        groups = prometheus.http.get("/api/v1/rules").json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if rules and all(rule.get("lastEvaluation", "").startswith("20") for rule in rules):
            break
        assert time.monotonic() < deadline, "rules never evaluated"
        time.sleep(0.5)
    defined = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())["groups"]
    assert len(rules) == sum(len(group["rules"]) for group in defined)
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    firing = [r["name"] for r in rules if r["state"] == "firing"]
    assert firing == [], "a healthy stack raises no alert"


def _grafana_to_promql(expr: str) -> str:
    return re.sub(r"\$__rate_interval", "1m", re.sub(r"\$(namespace|node)\b", ".*", expr))


def test_every_dashboard_query_is_valid_and_the_core_panels_have_data(
    prometheus: Prometheus, traffic: None
) -> None:
    prometheus.wait_for('http_requests_total{job="sdstack-gateway"}', "gateway requests")
    time.sleep(2.5)  # two more scrapes: rate() needs two samples of each series
    dashboard = json.loads((DEPLOY / "grafana" / "sdstack.json").read_text())
    answers: dict[str, int] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            answers[panel["title"]] = answers.get(panel["title"], 0) + len(
                prometheus.query(_grafana_to_promql(target["expr"]))
            )
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["definition"])
            assert inner, variable["definition"]
            assert prometheus.query(inner[1]), variable["name"]
    for title in (
        "Request rate by route",
        "Latency by route (p50, p95, p99)",
        "Calls by service, method and status",
        "Queue depth per pod",
        "Images per second",
        "Seconds per denoising step (p50, p95)",
    ):
        assert answers[title] > 0, title


def test_the_prometheus_adapter_query_serves_queue_depth_per_pod(prometheus: Prometheus) -> None:
    rule = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-adapter-rules.yaml").read_text())
    [custom] = rule["rules"]["custom"]
    series = prometheus.wait_for(custom["seriesQuery"], "adapter series")
    assert {s["metric"]["pod"] for s in series} == {"generator-local"}
    query = (
        custom["metricsQuery"]
        .replace("<<.Series>>", custom["name"]["as"])
        .replace("<<.LabelMatchers>>", 'namespace="local",pod=~"generator-local"')
        .replace("<<.GroupBy>>", "pod")
    )
    [value] = prometheus.query(query)
    assert value["metric"] == {"pod": "generator-local"}
    assert float(value["value"][1]) >= 0


def test_the_image_health_check_agrees_with_the_running_services(
    running_stack: RunningStack,
) -> None:
    settings = running_stack.settings
    env = {
        **os.environ,
        "SDSTACK_HOST": settings.host,
        **{f"SDSTACK_{s.upper()}_PORT": str(getattr(settings, f"{s}_port")) for s in SERVICES},
    }
    script = str(DEPLOY / "docker" / "healthcheck.py")
    for service in SERVICES:
        result = subprocess.run(
            [sys.executable, script, service], env=env, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, (service, result.stderr)
    [closed] = free_ports(1)
    result = subprocess.run(
        [sys.executable, script, "generator"],
        env={**env, "SDSTACK_GENERATOR_PORT": str(closed)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and "unhealthy" in result.stderr
