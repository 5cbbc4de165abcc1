"""The training queue: jobs wait QUEUED in SQL and run in submission order, as many at once
as the runner has slots (one per GPU locally).

A thread checks the table every `interval` seconds. A job whose worker is gone without a
final state (killed, crashed, or left behind by a trainer that restarted) goes back to the
queue and resumes from its last saved state, up to `max_attempts` runs; a cancelled job's
worker is told through SQL and stopped if it does not end by itself.

The same pass exports the training metrics (SPEC §7) from what the workers write to SQL,
so they are the same whether jobs run in local worker processes or as Kubernetes Jobs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from prometheus_client import Counter, Gauge

from services.common.errors import SdstackError, translate
from services.common.proto.sdstack.v1 import trainer_pb2
from services.trainer import jobs as states
from services.trainer.jobs import JobRecord, JobStore
from services.trainer.runners import Runner

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 30.0

TRAINING_LOSS = Gauge("sdstack_training_loss", "Latest loss of each running job.", ["job_id"])
TRAINING_STEPS = Counter(
    "sdstack_training_steps_total",
    "Training steps done, redone ones after a resume too.",
    ["job_id"],
)
TRAINING_JOBS = Counter(
    "sdstack_training_jobs_total", "Training jobs ended, by outcome.", ["outcome"]
)
TRAINING_QUEUE_DEPTH = Gauge("sdstack_training_queue_depth", "Training jobs waiting to run.")


class Dispatcher:
    def __init__(
        self, jobs: JobStore, runner: Runner, *, max_attempts: int, interval: float = 0.5
    ) -> None:
        self.jobs = jobs
        self.runner = runner
        self.max_attempts = max_attempts
        self.interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._cancel_seen: dict[str, float] = {}
        self._steps_seen: dict[str, int] = {}
        self._thread = threading.Thread(target=self._loop, name="training-queue", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Look at the queue now (a job was submitted or cancelled)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self.runner.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as error:  # the queue must outlive one bad pass
                known = translate(error)  # e.g. the database away: one line, not a trace
                if known is None:
                    log.exception("training queue pass failed")
                else:
                    log.warning("training queue: %s", known.message)
            self._wake.wait(self.interval)
            self._wake.clear()

    def tick(self) -> None:
        """One pass: check running jobs, then start queued ones into free slots."""
        active = self.jobs.in_states(states.ACTIVE_STATES)
        self._settle_departed({job.id for job in active})
        running = [job for job in active if self._check(job)]
        for job in running:
            self._observe(job)
        free = self.runner.slots - len(running)
        queued = self.jobs.in_states(frozenset({states.QUEUED}))
        TRAINING_QUEUE_DEPTH.set(max(len(queued) - max(free, 0), 0))
        for job in queued[: max(free, 0)]:
            if self.jobs.claim(job.id, worker="starting"):
                claimed = self.jobs.find(job.id)
                try:
                    self.jobs.set_worker(job.id, self.runner.start(claimed))
                except SdstackError as error:
                    self.jobs.finish(job.id, states.FAILED, f"could not start: {error.message}")

    def _check(self, job: JobRecord) -> bool:
        """True while the job's worker runs; otherwise settles the job."""
        if self.runner.alive(job):
            if job.cancel_requested:
                first = self._cancel_seen.setdefault(job.id, time.monotonic())
                if time.monotonic() - first > CANCEL_GRACE_S:
                    self.runner.stop(job)
            return True
        current = self.jobs.find(job.id)
        if current.final:
            self._ended(current, current.state)
            return False
        if current.cancel_requested:
            self.jobs.finish(job.id, states.CANCELLED)
            self._ended(current, states.CANCELLED)
        elif current.attempts >= self.max_attempts:
            self.jobs.finish(
                job.id,
                states.FAILED,
                f"the worker stopped {current.attempts} times without finishing",
            )
            self._ended(current, states.FAILED)
        else:
            log.warning("job %s: worker gone at step %d; resuming", job.id, current.step)
            self.jobs.requeue(job.id, "")
        return False

    def _observe(self, job: JobRecord) -> None:
        """Steps done since the last pass and the latest loss, into the metrics."""
        seen = self._steps_seen.get(job.id, 0)
        if job.step > seen:
            TRAINING_STEPS.labels(job.id).inc(job.step - seen)
        self._steps_seen[job.id] = job.step  # lower after a resume: redone steps count again
        if job.step > 0:
            TRAINING_LOSS.labels(job.id).set(job.loss)

    def _settle_departed(self, active: set[str]) -> None:
        """Jobs that left the active states since the last pass (a worker that finished
        between passes) are counted by how they ended."""
        for job_id in [seen for seen in self._steps_seen if seen not in active]:
            job = self.jobs.find(job_id)
            if job.final:
                self._ended(job, job.state)

    def _ended(self, job: JobRecord, state: int) -> None:
        self._observe(job)
        self._steps_seen.pop(job.id, None)
        with contextlib.suppress(KeyError):  # no loss was reported for it
            TRAINING_LOSS.remove(job.id)
        outcome = trainer_pb2.TrainingState.Name(state).removeprefix("TRAINING_STATE_").lower()
        TRAINING_JOBS.labels(outcome).inc()
