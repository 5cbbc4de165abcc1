"""Trainer process: wiring only (`python -m services.trainer.server`).

The Trainer contract is complete; its RPCs answer UNIMPLEMENTED until the trainer issue
builds them. The process already stands on the shared ground: store, metrics, health.
"""

from __future__ import annotations

import logging

from services.common.config import Settings
from services.common.grpc_server import GrpcServer, run_service
from services.common.object_store import DATASETS_BUCKET
from services.common.proto.sdstack.v1 import trainer_pb2_grpc
from services.common.wiring import connect_object_store, start_grpc_service

log = logging.getLogger(__name__)


def build(settings: Settings) -> GrpcServer:
    connect_object_store(settings, [DATASETS_BUCKET])
    servicer = trainer_pb2_grpc.TrainerServicer()
    server = start_grpc_service(
        settings,
        "trainer",
        "sdstack.v1.Trainer",
        lambda s: trainer_pb2_grpc.add_TrainerServicer_to_server(servicer, s),
    )
    server.set_serving(True)
    log.info("trainer ready on %s", settings.target("trainer"))
    return server


def main() -> None:
    run_service("trainer", build)


if __name__ == "__main__":
    main()
