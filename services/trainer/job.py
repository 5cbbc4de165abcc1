"""Entry point of a training Kubernetes Job (`python -m services.trainer.job`): runs the job
named by `SDSTACK_TRAINING_JOB_ID`, which the trainer sets in each Job it creates."""

from __future__ import annotations

import os
import sys

from services.trainer.runners import JOB_ID_VARIABLE
from services.trainer.worker import main as worker_main


def main() -> int:
    job_id = os.environ.get(JOB_ID_VARIABLE, "").strip()
    if not job_id:
        sys.stderr.write(f"trainer job: {JOB_ID_VARIABLE} is not set\n")
        return 2
    return worker_main([job_id])


if __name__ == "__main__":
    raise SystemExit(main())
