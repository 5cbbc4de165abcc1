"""Prometheus, its alert rules, ServiceMonitors and the Grafana dashboard (deploy/).

The alert rules are tested with promtool (Prometheus's own rule unit tests); the scrape
jobs and ServiceMonitors are checked against the Services the overlays really render.
tests/deploy/test_observability_live.py runs the same files in a real Prometheus.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import DEPLOY, OVERLAYS, Obj, by_kind, load_all, render, tool

PROMETHEUS = DEPLOY / "prometheus"
SDSTACK_JOBS = {
    "sdstack-gateway": ("gateway", "http"),
    "sdstack-generator": ("generator", "metrics"),
    "sdstack-trainer": ("trainer", "metrics"),
    "sdstack-gallery": ("gallery", "metrics"),
    "sdstack-minio": ("minio", "s3"),
}


def yaml_documents(name: str) -> list[Obj]:
    return load_all((PROMETHEUS / name).read_text())


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Obj]]:
    return {overlay: by_kind(load_all(render(overlay)), "Service") for overlay in OVERLAYS}


def _service_port(services: dict[str, Obj], app: str, port_name: str) -> Obj:
    service = services[f"sdstack-{app}"]
    assert service["metadata"]["labels"]["app.kubernetes.io/name"] == app
    return next(p for p in service["spec"]["ports"] if p["name"] == port_name)


def test_alert_rules_pass_promtool_unit_tests() -> None:
    result = subprocess.run(
        [tool("promtool"), "test", "rules", "alerts.test.yaml"],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {
        test["alertname"]
        for case in yaml.safe_load((PROMETHEUS / "alerts.test.yaml").read_text())["tests"]
        for test in case["alert_rule_test"]
    }
    defined = {
        rule["alert"]
        for group in yaml.safe_load((PROMETHEUS / "alerts.yaml").read_text())["groups"]
        for rule in group["rules"]
    }
    assert tested == defined, "every alert has a unit test"
    # what the issue asks to be alerted on
    assert {
        "SdstackGeneratorQueueBackingUp",
        "SdstackHttpErrorRate",
        "SdstackGrpcErrorRate",
        "SdstackGpuMemoryNearFull",
        "GpuMemoryNearFull",
        "SdstackTrainingJobFailed",
        "SdstackTrainingKubernetesJobFailed",
    } <= defined


def test_the_operator_rule_is_the_plain_rule_file() -> None:
    [rule] = yaml_documents("prometheusrule.yaml")
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load((PROMETHEUS / "alerts.yaml").read_text())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scrape_jobs_keep_ports_the_services_expose(
    overlay: str, services: dict[str, dict[str, Obj]]
) -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(SDSTACK_JOBS) | {"sdstack-training", "dcgm-exporter"} == set(jobs)
    for job_name, (app, port_name) in SDSTACK_JOBS.items():
        job = jobs[job_name]
        [sd] = job["kubernetes_sd_configs"]
        assert sd == {"role": "endpoints", "namespaces": {"names": ["sdstack"]}}
        [keep] = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
        assert keep["regex"] == f"{app};{port_name}"
        _service_port(services[overlay], app, port_name)
        targets = {r.get("target_label") for r in job["relabel_configs"]}
        assert {"namespace", "pod", "node"} <= targets, job_name
    assert config["rule_files"] == ["alerts.yaml"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitors_select_the_rendered_services(
    overlay: str, services: dict[str, dict[str, Obj]]
) -> None:
    monitors = {m["metadata"]["name"]: m for m in yaml_documents("servicemonitors.yaml")}
    for job_name, (app, port_name) in SDSTACK_JOBS.items():
        spec = monitors[job_name]["spec"]
        assert spec["selector"] == {"matchLabels": {"app.kubernetes.io/name": app}}
        [endpoint] = spec["endpoints"]
        assert endpoint["port"] == port_name
        _service_port(services[overlay], app, port_name)
    training = monitors["sdstack-training"]
    assert training["kind"] == "PodMonitor"
    assert training["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "trainer-job"}
    dcgm = monitors["dcgm-exporter"]["spec"]["endpoints"][0]
    assert {"targetLabel": "job", "replacement": "dcgm-exporter"} in dcgm["relabelings"]


def _dashboard_exprs() -> dict[str, list[str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "sdstack.json").read_text())
    return {
        panel["title"]: [t["expr"] for t in panel["targets"]]
        for panel in dashboard["panels"]
        if panel["type"] != "row"
    }


def test_the_dashboard_shows_what_operators_watch() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "sdstack.json").read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace", "node"}
    everything = " ".join(e for exprs in _dashboard_exprs().values() for e in exprs)
    wanted: dict[str, Any] = {
        "request rate by route": "http_requests_total",
        "latency by route": "http_request_duration_seconds_bucket",
        "errors": 'status=~"5.."',
        "queue depth": "sdstack_generator_queue_depth",
        "images/s": "sdstack_images_generated_total",
        "seconds per step": "sdstack_seconds_per_step_bucket",
        "GPU utilisation (NVML)": "sdstack_gpu_utilization_ratio",
        "GPU memory (NVML)": "sdstack_gpu_memory_used_bytes",
        "GPU utilisation (DCGM)": "DCGM_FI_DEV_GPU_UTIL",
        "GPU memory (DCGM)": "DCGM_FI_DEV_FB_USED",
        "training loss": "sdstack_training_loss",
    }
    for what, series in wanted.items():
        assert series in everything, what
