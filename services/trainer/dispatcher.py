"""The training queue: jobs wait QUEUED in SQL and run in submission order, as many at once
as the runner has slots (one per GPU locally).

A thread checks the table every `interval` seconds. A job whose worker is gone without a
final state (killed, crashed, or left behind by a trainer that restarted) goes back to the
queue and resumes from its last saved state, up to `max_attempts` runs; a cancelled job's
worker is told through SQL and stopped if it does not end by itself.
"""

from __future__ import annotations

import logging
import threading
import time

from services.common.errors import SdstackError
from services.trainer import jobs as states
from services.trainer.jobs import JobRecord, JobStore
from services.trainer.runners import Runner

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 30.0


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
            except SdstackError as error:
                log.warning("training queue: %s", error.message)
            except Exception:  # the queue must outlive one bad pass (e.g. the database away)
                log.exception("training queue pass failed")
            self._wake.wait(self.interval)
            self._wake.clear()

    def tick(self) -> None:
        """One pass: check running jobs, then start queued ones into free slots."""
        running = [job for job in self.jobs.in_states(states.ACTIVE_STATES) if self._check(job)]
        free = self.runner.slots - len(running)
        for job in self.jobs.in_states(frozenset({states.QUEUED}))[: max(free, 0)]:
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
            return False
        if current.cancel_requested:
            self.jobs.finish(job.id, states.CANCELLED)
        elif current.attempts >= self.max_attempts:
            self.jobs.finish(
                job.id,
                states.FAILED,
                f"the worker stopped {current.attempts} times without finishing",
            )
        else:
            log.warning("job %s: worker gone at step %d; resuming", job.id, current.step)
            self.jobs.requeue(job.id, "")
        return False
