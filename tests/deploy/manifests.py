"""Rendering the kustomize overlays and walking what they contain, for tests/deploy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ("local", "gpu-cluster")
INSTALL_HINT = "run `make install-dev` (scripts/install_deploy_tools.sh installs it)"

Obj = dict[str, Any]


def tool(name: str) -> str:
    """The path of a tool tests/deploy needs: beside the venv's python, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    checkov = Path(sys.executable).parent.parent / "checkov" / "bin" / name
    if checkov.exists():
        return str(checkov)
    found = shutil.which(name)
    assert found, f"{name} is not installed: {INSTALL_HINT}"
    return found


def render(overlay: str) -> str:
    """`kubectl kustomize` of one overlay (kubectl's built-in kustomize, no network)."""
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kustomize {overlay} failed: {result.stderr}"
    return result.stdout


def load_all(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@dataclass(frozen=True)
class Workload:
    """A Deployment, StatefulSet or CronJob, with its pod spec wherever it sits."""

    obj: Obj

    @property
    def kind(self) -> str:
        return self.obj["kind"]

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]

    @property
    def template(self) -> Obj:
        spec = self.obj["spec"]
        if self.kind == "CronJob":
            return spec["jobTemplate"]["spec"]["template"]
        return spec["template"]

    @property
    def pod(self) -> Obj:
        return self.template["spec"]

    @property
    def labels(self) -> dict[str, str]:
        return self.template["metadata"]["labels"]

    @property
    def containers(self) -> list[Obj]:
        return self.pod.get("initContainers", []) + self.pod["containers"]

    def env(self, container: Obj) -> dict[str, Any]:
        return {e["name"]: e for e in container.get("env", [])}


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "CronJob", "Job", "DaemonSet")


def workloads(objects: list[Obj]) -> Iterator[Workload]:
    for obj in objects:
        if obj["kind"] in WORKLOAD_KINDS:
            yield Workload(obj)


def by_kind(objects: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels only, as sdstack uses) selects `labels`."""
    assert set(selector) <= {"matchLabels"}, f"selector form not handled: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
