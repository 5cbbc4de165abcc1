"""Training jobs as the API sees them: estimate, start, read, watch, cancel.

Start checks everything that can be checked before queueing (the configuration, the
dataset, the base model, the optimizer on this machine) so a job fails late only for what
only training can find. Watching polls SQL, where the worker writes: one source of truth
for every replica and for workers in other processes or pods.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from services.common.errors import InvalidArgument, NotFound
from services.common.object_store import DATASETS_BUCKET, MODELS_BUCKET, ObjectStore
from services.common.request_context import current_request_id, is_valid_request_id, new_request_id
from services.trainer import jobs as states
from services.trainer.config import RequestedConfig, resolve_config
from services.trainer.datasets import Dataset, DatasetStore, check_owner
from services.trainer.dispatcher import Dispatcher
from services.trainer.jobs import JobRecord, JobStore
from services.trainer.plan import DatasetShape, TrainingEstimate, estimate
from services.trainer.training import optimizer_available

WATCH_POLL_S = 0.3
CHECKPOINT_FORMATS = ("safetensors", "ckpt", "diffusers")


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    epoch: int
    loss: float
    learning_rate: float
    eta_seconds: float | None


@dataclass(frozen=True)
class Sample:
    step: int
    prompt: str
    png: bytes


WatchEvent = JobRecord | Progress | Sample


def dataset_shape(dataset: Dataset) -> DatasetShape:
    return DatasetShape(
        repeats=[image.repeats for image in dataset.images],
        sizes=[(image.width, image.height) for image in dataset.images],
    )


class Trainings:
    def __init__(
        self,
        jobs: JobStore,
        datasets: DatasetStore,
        store: ObjectStore,
        dispatcher: Dispatcher | None,
        *,
        local_device: torch.device | None,
    ) -> None:
        self.jobs = jobs
        self.datasets = datasets
        self.store = store
        self.dispatcher = dispatcher
        self.local_device = local_device

    def estimate(self, owner: str, config: RequestedConfig) -> TrainingEstimate:
        check_owner(owner)
        resolved = resolve_config(config)
        dataset = self.datasets.get(owner, resolved.dataset_id)
        return estimate(resolved, dataset_shape(dataset))

    def start(self, owner: str, request_id: str, config: RequestedConfig) -> JobRecord:
        request_id = request_id or current_request_id() or new_request_id()
        if not is_valid_request_id(request_id):
            raise InvalidArgument("request_id", "at most 64 of A-Z a-z 0-9 _ . -")
        planned = self.estimate(owner, config)
        self._check_base_model(planned.resolved.base_model)
        if self.local_device is not None:
            problem = optimizer_available(planned.resolved.optimizer, self.local_device)
            if problem:
                raise InvalidArgument(
                    "config.optimizer", problem.removeprefix("config.optimizer: ")
                )
        if planned.total_steps < 1:
            raise InvalidArgument("config", "the configuration trains no step")
        job, _ = self.jobs.create(owner, request_id, planned)
        if self.dispatcher is not None:
            self.dispatcher.wake()
        return job

    def _check_base_model(self, name: str) -> None:
        for file_format in CHECKPOINT_FORMATS:
            if self.store.exists(MODELS_BUCKET, f"checkpoints/{name}.{file_format}"):
                return
        raise NotFound("model", name)

    def get(self, owner: str, job_id: str) -> JobRecord:
        check_owner(owner)
        return self.jobs.get(owner, _job_id(job_id))

    def list(self, owner: str) -> list[JobRecord]:
        check_owner(owner)
        return self.jobs.list(owner)

    def cancel(self, owner: str, job_id: str) -> JobRecord:
        job = self.get(owner, job_id)
        if not job.final:
            self.jobs.request_cancel(job.id)
            if self.dispatcher is not None:
                self.dispatcher.wake()
        return self.jobs.find(job.id)

    def watch(self, owner: str, job_id: str, is_active: Callable[[], bool]) -> Iterator[WatchEvent]:
        """The job now, then progress, samples and each state change until a final state."""
        job = self.get(owner, job_id)
        yield job
        last_state, last_step, samples_sent = job.state, job.step, 0
        while not job.final and is_active():
            time.sleep(WATCH_POLL_S)
            job = self.jobs.find(job.id)
            if job.step != last_step and job.state == states.RUNNING:
                last_step = job.step
                yield Progress(
                    job.step,
                    job.estimate.total_steps,
                    job.epoch,
                    job.loss,
                    job.learning_rate,
                    job.eta_seconds,
                )
            if len(job.sample_keys) > samples_sent:
                yield from self._samples(job, samples_sent)
                samples_sent = len(job.sample_keys)
            if job.state != last_state:
                last_state = job.state
                yield job

    def _samples(self, job: JobRecord, start: int) -> Iterator[Sample]:
        for key in job.sample_keys[start:]:
            info = self.store.stat(DATASETS_BUCKET, key)
            png = self.store.get_bytes(DATASETS_BUCKET, key)
            step = int(key.rsplit("/", 1)[-1].split("-", 1)[0])
            yield Sample(step, info.metadata.get("prompt", ""), png)


def _job_id(job_id: str) -> str:
    if len(job_id) != 32 or any(c not in "0123456789abcdef" for c in job_id):
        raise InvalidArgument("job_id", "must be a training job id (32 hex)")
    return job_id
