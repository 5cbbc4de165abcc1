"""Trainer process: wiring only (`python -m services.trainer.server`).

Datasets live in the `datasets` bucket, training jobs in SQL; jobs run in worker processes
(or Kubernetes Jobs) started by the dispatcher, never in this process.
"""

from __future__ import annotations

import logging

from services.common.config import Settings
from services.common.gpu_metrics import register_gpu_metrics
from services.common.grpc_server import GrpcServer, run_service
from services.common.object_store import DATASETS_BUCKET
from services.common.proto.sdstack.v1 import trainer_pb2_grpc
from services.common.sd.devices import pick_device
from services.common.sql import create_engine_for
from services.common.wiring import connect_object_store, start_grpc_service
from services.trainer.datasets import DatasetStore
from services.trainer.dispatcher import Dispatcher
from services.trainer.jobs import JobStore
from services.trainer.runners import make_runner
from services.trainer.servicer import TrainerServicer
from services.trainer.tagger import TaggerStore
from services.trainer.trainings import Trainings

log = logging.getLogger(__name__)


def build(settings: Settings) -> GrpcServer:
    store = connect_object_store(settings, [DATASETS_BUCKET])
    jobs = JobStore(create_engine_for(settings.resolved_database_url))
    jobs.create_schema()
    datasets = DatasetStore(
        store,
        max_pixels=settings.max_pixels,
        max_bytes=settings.trainer_max_dataset_bytes,
        max_files=settings.trainer_max_dataset_files,
    )
    dispatcher = Dispatcher(jobs, make_runner(settings), max_attempts=settings.trainer_max_attempts)
    local = settings.trainer_runner == "local"
    trainings = Trainings(
        jobs,
        datasets,
        store,
        dispatcher,
        local_device=pick_device(settings.device) if local else None,
    )
    taggers = TaggerStore(store, settings.data_dir / "cache" / "taggers")
    servicer = TrainerServicer(datasets, taggers, trainings)
    register_gpu_metrics()  # per-GPU memory/utilisation in /metrics; none without a GPU
    server = start_grpc_service(
        settings,
        "trainer",
        "sdstack.v1.Trainer",
        lambda s: trainer_pb2_grpc.add_TrainerServicer_to_server(servicer, s),
    )
    server.on_shutdown(dispatcher.stop)
    dispatcher.start()
    server.set_serving(True)
    log.info("trainer ready on %s (%s runner)", settings.target("trainer"), settings.trainer_runner)
    return server


def main() -> None:
    run_service("trainer", build)


if __name__ == "__main__":
    main()
