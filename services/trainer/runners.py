"""Where training jobs run: a local worker process, or a Kubernetes Job.

Both answer the same three questions for the queue: start this job, is its worker still
there, stop it. The worker itself reports progress and the outcome through SQL.

Locally each job is a child process (`services.trainer.worker`) in a session of its own,
pinned to one GPU through CUDA_VISIBLE_DEVICES when there are GPUs, so a crash in training
never takes the gRPC server down. With `SDSTACK_TRAINER_RUNNER=kubernetes` each job becomes
a Job copied from the `jobTemplate` of a CronJob (deploy/k8s/base/trainer-job.yaml:
suspended, it never runs by itself), named `sdstack-train-<job id>-<attempt>`, with
`SDSTACK_TRAINING_JOB_ID` set; the API is reached with the pod's service-account token.
"""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml

from services.common.config import Settings, settings_env
from services.common.errors import ConfigError, Unavailable
from services.trainer.jobs import JobRecord

log = logging.getLogger(__name__)

JOB_ID_VARIABLE = "SDSTACK_TRAINING_JOB_ID"
JOB_LABEL = "sdstack.io/training-job"
CONTAINER = "train"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
API_TIMEOUT_S = 10.0


class Runner(Protocol):
    slots: int

    def start(self, job: JobRecord) -> str: ...

    def alive(self, job: JobRecord) -> bool: ...

    def stop(self, job: JobRecord) -> None: ...

    def close(self) -> None: ...


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken CUDA install must not stop the trainer
        return 0


# --- local -------------------------------------------------------------------------------------


class LocalRunner:
    """Worker processes on this machine: one per GPU (one without a GPU) unless configured."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.gpus = gpu_count()
        self.slots = settings.trainer_slots or max(self.gpus, 1)
        self._workers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}

    def start(self, job: JobRecord) -> str:
        self._reap()
        used = {slot for _, slot in self._workers.values()}
        slot = next(i for i in range(len(used) + 1) if i not in used)
        env = {**os.environ, **settings_env(self.settings)}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)
        command = [
            sys.executable,
            "-m",
            "services.trainer.worker",
            job.id,
            "--parent-pid",
            str(os.getpid()),
        ]
        process = subprocess.Popen(command, env=env, start_new_session=True)
        self._workers[job.id] = (process, slot)
        log.info("job %s: worker pid %d (slot %d)", job.id, process.pid, slot)
        return f"pid:{process.pid}"

    def alive(self, job: JobRecord) -> bool:
        entry = self._workers.get(job.id)
        return entry is not None and entry[0].poll() is None

    def stop(self, job: JobRecord) -> None:
        entry = self._workers.get(job.id)
        if entry is not None and entry[0].poll() is None:
            entry[0].terminate()

    def close(self) -> None:
        """Stops every worker (they resume from their saved state on the next start)."""
        for process, _ in self._workers.values():
            if process.poll() is None:
                process.terminate()
        for process, _ in self._workers.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._workers.clear()

    def _reap(self) -> None:
        for job_id, (process, _) in list(self._workers.items()):
            if process.poll() is not None:
                del self._workers[job_id]


# --- Kubernetes --------------------------------------------------------------------------------


def job_name(job_id: str, attempt: int) -> str:
    return f"sdstack-train-{job_id}-{attempt}"


def render_job(template: dict[str, Any], job: JobRecord, namespace: str) -> dict[str, Any]:
    """The Job manifest for `job`, from a CronJob carrying the training `jobTemplate`."""
    if template.get("kind") != "CronJob" or "jobTemplate" not in template.get("spec", {}):
        raise ConfigError("SDSTACK_TRAINER_JOB_TEMPLATE", "must name a CronJob with a jobTemplate")
    job_template = copy.deepcopy(template["spec"]["jobTemplate"])
    metadata = job_template.get("metadata", {})
    labels = {**metadata.get("labels", {}), JOB_LABEL: job.id}
    spec = job_template["spec"]
    pod = spec["template"]
    pod.setdefault("metadata", {}).setdefault("labels", {})[JOB_LABEL] = job.id
    containers = pod["spec"]["containers"]
    container = next((c for c in containers if c.get("name") == CONTAINER), containers[0])
    env = [e for e in container.get("env", []) if e.get("name") != JOB_ID_VARIABLE]
    container["env"] = [{"name": JOB_ID_VARIABLE, "value": job.id}, *env]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(job.id, max(job.attempts, 1)),
            "namespace": namespace,
            "labels": labels,
            "annotations": {**metadata.get("annotations", {}), "sdstack.io/owner": job.owner},
        },
        "spec": spec,
    }


class KubernetesApi:
    """The few calls the runner makes, with the pod's service-account credentials."""

    def __init__(self) -> None:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        token_file = SERVICE_ACCOUNT / "token"
        if not host or not token_file.is_file():
            raise ConfigError(
                "SDSTACK_TRAINER_RUNNER", "kubernetes needs to run in a pod with a service account"
            )
        self.client = httpx.Client(
            base_url=f"https://{host}:{port}",
            verify=str(SERVICE_ACCOUNT / "ca.crt"),
            timeout=API_TIMEOUT_S,
        )
        self.token_file = token_file

    def request(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token_file.read_text().strip()}"}
        try:
            return self.client.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as error:
            raise Unavailable(f"Kubernetes API: {error}") from error

    def close(self) -> None:
        self.client.close()


class KubernetesRunner:
    """Training Jobs in the trainer's namespace; the cluster schedules them on GPU nodes."""

    def __init__(self, settings: Settings, api: KubernetesApi | None = None) -> None:
        self.settings = settings
        self.namespace = settings.trainer_namespace
        self.slots = settings.trainer_slots or 1_000_000  # the cluster queues pending pods
        self.api = api or KubernetesApi()

    def template(self) -> dict[str, Any]:
        source = self.settings.trainer_job_template
        if source.endswith((".yaml", ".yml")):
            return load_template_file(Path(source))
        path = f"/apis/batch/v1/namespaces/{self.namespace}/cronjobs/{source}"
        response = self.api.request("GET", path)
        if response.status_code != 200:
            raise Unavailable(f"cannot read the training Job template {source}: {response.text}")
        return response.json()

    def start(self, job: JobRecord) -> str:
        manifest = render_job(self.template(), job, self.namespace)
        path = f"/apis/batch/v1/namespaces/{self.namespace}/jobs"
        response = self.api.request("POST", path, manifest)
        if response.status_code not in (200, 201, 409):
            raise Unavailable(f"cannot create Job {manifest['metadata']['name']}: {response.text}")
        return f"job:{manifest['metadata']['name']}"

    def alive(self, job: JobRecord) -> bool:
        name = job.worker.removeprefix("job:")
        try:
            response = self.api.request(
                "GET", f"/apis/batch/v1/namespaces/{self.namespace}/jobs/{name}"
            )
        except Unavailable:
            return True  # a flaky API is no reason to start the job again
        if response.status_code == 404:
            return False
        status = response.json().get("status", {})
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions", [])}
        return conditions.get("Failed") != "True" and conditions.get("Complete") != "True"

    def stop(self, job: JobRecord) -> None:
        name = job.worker.removeprefix("job:")
        path = f"/apis/batch/v1/namespaces/{self.namespace}/jobs/{name}"
        self.api.request("DELETE", path, {"propagationPolicy": "Background"})

    def close(self) -> None:
        self.api.close()


def load_template_file(path: Path) -> dict[str, Any]:
    """The CronJob in a YAML file (the first document of that kind)."""
    for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if isinstance(document, dict) and document.get("kind") == "CronJob":
            return document
    raise ConfigError("SDSTACK_TRAINER_JOB_TEMPLATE", f"{path} holds no CronJob")


def make_runner(settings: Settings) -> Runner:
    if settings.trainer_runner == "kubernetes":
        return KubernetesRunner(settings)
    return LocalRunner(settings)
