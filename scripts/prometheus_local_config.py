"""A Prometheus configuration for a local stack (`make up`), made from the Kubernetes one.

    .venv/bin/python scripts/prometheus_local_config.py > prometheus.yml
    prometheus --config.file=prometheus.yml --web.listen-address=127.0.0.1:9090

It keeps deploy/prometheus/prometheus.yml's sdstack jobs, metrics paths, relabelling and
alert rules, and swaps Kubernetes service discovery for static targets on the local ports
(`SDSTACK_*_PORT`, as the services read them). Each target carries the discovery labels
the job's relabelling expects (service label, port name, namespace `local`, pod, node), so
the very relabel rules used in the cluster run here too. Jobs with nothing local to scrape
(training Jobs, MinIO, the DCGM exporter) are left out.
"""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

from services.common.config import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
DEPLOY_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
ALERT_RULES = REPO / "deploy" / "prometheus" / "alerts.yaml"

LOCAL_PORTS = {
    "sdstack-gateway": "gateway_port",
    "sdstack-generator": "generator_metrics_port",
    "sdstack-trainer": "trainer_metrics_port",
    "sdstack-gallery": "gallery_metrics_port",
}
"""Job name in the deploy config → the setting holding that service's metrics port."""

_LITERAL = re.compile(r"^[A-Za-z0-9_.\-]+$")


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def discovery_labels(job: dict[str, Any]) -> dict[str, str]:
    """The `__meta_*` labels a target must carry to pass the job's `keep` rules."""
    labels: dict[str, str] = {}
    for rule in job.get("relabel_configs", []):
        if rule.get("action") != "keep":
            continue
        values = str(rule["regex"]).split(rule.get("separator", ";"))
        sources = rule["source_labels"]
        if len(values) != len(sources) or not all(_LITERAL.match(v) for v in values):
            raise ValueError(f"job {job['job_name']}: keep rule {rule['regex']!r} is not literal")
        labels.update(zip(sources, values, strict=True))
    return labels


def local_config(
    settings: Settings,
    *,
    scrape_interval: str = "15s",
    rule_files: list[str] | None = None,
) -> dict[str, Any]:
    """The deploy configuration with static local targets for the sdstack jobs."""
    deployed = yaml.safe_load(DEPLOY_CONFIG.read_text())
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    jobs = []
    for job in deployed["scrape_configs"]:
        setting = LOCAL_PORTS.get(job["job_name"])
        if setting is None:
            continue
        service = job["job_name"].removeprefix("sdstack-")
        labels = {
            **discovery_labels(job),
            "__meta_kubernetes_namespace": "local",
            "__meta_kubernetes_pod_name": f"{service}-local",
            "__meta_kubernetes_pod_node_name": socket.gethostname(),
        }
        local = {k: v for k, v in job.items() if k != "kubernetes_sd_configs"}
        local["static_configs"] = [
            {"targets": [f"{host}:{getattr(settings, setting)}"], "labels": labels}
        ]
        jobs.append(local)
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": rule_files if rule_files is not None else [str(ALERT_RULES)],
        "scrape_configs": jobs,
    }


def dump(config: dict[str, Any]) -> str:
    return yaml.dump(config, Dumper=_Dumper, sort_keys=False)


def main() -> int:
    sys.stdout.write(dump(local_config(load_settings())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
