"""Training jobs in SQL: the queue, the live progress and the outcome of every job.

The trainer service and its workers (local child processes or Kubernetes Jobs) share this
table: the service queues and claims jobs, the worker writes progress and the final state.
Every read by a user is scoped by owner; another owner's job is reported as missing.

A job's estimate, with the resolved configuration inside it, is stored as the JSON of its
`to_dict` (marked with `ESTIMATE_FORMAT`) and read back with `from_dict`: what the service
resolved is what the worker trains with. Jobs stored before hold the estimate's protobuf
JSON, which is still read.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from services.common.errors import NotFound
from services.common.proto.sdstack.v1 import trainer_pb2
from services.trainer.config import TrainingConfig
from services.trainer.messages import estimate_from_message
from services.trainer.plan import TrainingEstimate

QUEUED = trainer_pb2.TRAINING_STATE_QUEUED
PREPARING = trainer_pb2.TRAINING_STATE_PREPARING
RUNNING = trainer_pb2.TRAINING_STATE_RUNNING
SUCCEEDED = trainer_pb2.TRAINING_STATE_SUCCEEDED
FAILED = trainer_pb2.TRAINING_STATE_FAILED
CANCELLED = trainer_pb2.TRAINING_STATE_CANCELLED
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE_STATES = frozenset({PREPARING, RUNNING})
ESTIMATE_FORMAT = 2  # 1: protobuf JSON of a TrainingEstimate, without a "format" key

metadata = MetaData()
training_jobs = Table(
    "training_jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("owner", String(128), nullable=False, index=True),
    Column("request_id", String(64), nullable=False),
    Column("state", Integer, nullable=False, index=True),
    Column("estimate", Text, nullable=False),
    Column("step", BigInteger, nullable=False, default=0),
    Column("epoch", Integer, nullable=False, default=0),
    Column("loss", Float, nullable=False, default=0.0),
    Column("learning_rate", Float, nullable=False, default=0.0),
    Column("eta_seconds", Float, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("started_at", DateTime, nullable=True),
    Column("finished_at", DateTime, nullable=True),
    Column("lora_name", String(160), nullable=False, default=""),
    Column("lora_file_bytes", BigInteger, nullable=False, default=0),
    Column("error", Text, nullable=False, default=""),
    Column("sample_keys", Text, nullable=False, default="[]"),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("resumed_from_step", BigInteger, nullable=False, default=0),
    Column("worker", String(256), nullable=False, default=""),
    UniqueConstraint("owner", "request_id", name="uq_training_jobs_owner_request"),
)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None else None


@dataclass(frozen=True)
class JobRecord:
    id: str
    owner: str
    request_id: str
    state: int
    estimate: TrainingEstimate
    step: int = 0
    epoch: int = 0
    loss: float = 0.0
    learning_rate: float = 0.0
    eta_seconds: float | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    lora_name: str = ""
    lora_file_bytes: int = 0
    error: str = ""
    sample_keys: tuple[str, ...] = field(default=())
    cancel_requested: bool = False
    attempts: int = 0
    resumed_from_step: int = 0
    worker: str = ""

    @property
    def config(self) -> TrainingConfig:
        return self.estimate.resolved

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


def _estimate_json(estimate: TrainingEstimate) -> str:
    return json.dumps({"format": ESTIMATE_FORMAT, **estimate.to_dict()})


def _estimate_from_json(text: str) -> TrainingEstimate:
    values = json.loads(text)
    if values.pop("format", None) == ESTIMATE_FORMAT:
        return TrainingEstimate.from_dict(values)
    return estimate_from_message(json_format.Parse(text, trainer_pb2.TrainingEstimate()))


def _from_row(row: Any) -> JobRecord:
    return JobRecord(
        id=row.id,
        owner=row.owner,
        request_id=row.request_id,
        state=row.state,
        estimate=_estimate_from_json(row.estimate),
        step=row.step,
        epoch=row.epoch,
        loss=row.loss,
        learning_rate=row.learning_rate,
        eta_seconds=row.eta_seconds,
        created_at=_aware(row.created_at),
        started_at=_aware(row.started_at),
        finished_at=_aware(row.finished_at),
        lora_name=row.lora_name,
        lora_file_bytes=row.lora_file_bytes,
        error=row.error,
        sample_keys=tuple(json.loads(row.sample_keys)),
        cancel_requested=row.cancel_requested,
        attempts=row.attempts,
        resumed_from_step=row.resumed_from_step,
        worker=row.worker,
    )


class JobStore:
    """Reads and writes `training_jobs`; returns frozen records, never holds a session."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create_schema(self) -> None:
        metadata.create_all(self.engine)

    def create(
        self, owner: str, request_id: str, estimate: TrainingEstimate
    ) -> tuple[JobRecord, bool]:
        """A new QUEUED job, or the owner's existing job of the same request id (a retried
        StartTraining); the flag says whether it is new."""
        job_id = uuid.uuid4().hex
        values = {
            "id": job_id,
            "owner": owner,
            "request_id": request_id,
            "state": QUEUED,
            "estimate": _estimate_json(estimate),
            "created_at": _now(),
        }
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(training_jobs).values(**values))
        except IntegrityError:
            query = select(training_jobs).where(
                training_jobs.c.owner == owner, training_jobs.c.request_id == request_id
            )
            with self.engine.connect() as connection:
                row = connection.execute(query).one()
            return _from_row(row), False
        return self.find(job_id), True

    def find(self, job_id: str) -> JobRecord:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(training_jobs).where(training_jobs.c.id == job_id)
            ).one_or_none()
        if row is None:
            raise NotFound("training", job_id)
        return _from_row(row)

    def get(self, owner: str, job_id: str) -> JobRecord:
        job = self.find(job_id)
        if job.owner != owner:
            raise NotFound("training", job_id)
        return job

    def list(self, owner: str) -> list[JobRecord]:
        query = (
            select(training_jobs)
            .where(training_jobs.c.owner == owner)
            .order_by(training_jobs.c.created_at.desc())
        )
        with self.engine.connect() as connection:
            return [_from_row(row) for row in connection.execute(query)]

    def in_states(self, states: frozenset[int]) -> list[JobRecord]:
        query = (
            select(training_jobs)
            .where(training_jobs.c.state.in_(sorted(states)))
            .order_by(training_jobs.c.created_at)
        )
        with self.engine.connect() as connection:
            return [_from_row(row) for row in connection.execute(query)]

    def claim(self, job_id: str, worker: str) -> bool:
        """QUEUED → PREPARING for `worker`; False when someone else claimed it first."""
        return self._update(
            job_id,
            {QUEUED},
            state=PREPARING,
            worker=worker,
            attempts=training_jobs.c.attempts + 1,
            eta_seconds=None,
        )

    def requeue(self, job_id: str, reason: str) -> bool:
        """An active job whose worker is gone goes back to the queue to resume."""
        return self._update(job_id, set(ACTIVE_STATES), state=QUEUED, worker="", error=reason)

    def set_worker(self, job_id: str, worker: str) -> None:
        self._update(job_id, None, worker=worker)

    def start_running(self, job_id: str, resumed_from_step: int) -> bool:
        return self._update(
            job_id,
            set(ACTIVE_STATES),
            state=RUNNING,
            started_at=_now(),
            resumed_from_step=resumed_from_step,
            step=resumed_from_step,
            error="",
        )

    def progress(
        self, job_id: str, *, step: int, epoch: int, loss: float, lr: float, eta: float
    ) -> None:
        self._update(
            job_id, {RUNNING}, step=step, epoch=epoch, loss=loss, learning_rate=lr, eta_seconds=eta
        )

    def add_sample(self, job_id: str, key: str) -> None:
        job = self.find(job_id)
        keys = json.dumps([*job.sample_keys, key])
        self._update(job_id, None, sample_keys=keys)

    def set_lora(self, job_id: str, name: str, size: int) -> None:
        self._update(job_id, None, lora_name=name, lora_file_bytes=size)

    def finish(self, job_id: str, state: int, error: str = "") -> bool:
        """The job's final state; a job already final keeps its first one."""
        return self._update(
            job_id,
            {QUEUED, *ACTIVE_STATES},
            state=state,
            error=error,
            finished_at=_now(),
            eta_seconds=None,
        )

    def request_cancel(self, job_id: str) -> None:
        self._update(job_id, None, cancel_requested=True)
        self._update(job_id, {QUEUED}, state=CANCELLED, finished_at=_now())

    def _update(self, job_id: str, states: set[int] | None, **values: Any) -> bool:
        query = update(training_jobs).where(training_jobs.c.id == job_id)
        if states is not None:
            query = query.where(training_jobs.c.state.in_(sorted(states)))
        with self.engine.begin() as connection:
            return connection.execute(query.values(**values)).rowcount > 0
