"""Typed client of the Trainer service."""

from __future__ import annotations

from services.common.clients.channel import ServiceClient
from services.common.proto.sdstack.v1 import trainer_pb2, trainer_pb2_grpc


class TrainerClient(ServiceClient):
    SERVICE = "sdstack.v1.Trainer"
    IDEMPOTENT_METHODS = (
        "GetDataset",
        "ListDatasets",
        "EstimateTraining",
        "GetTraining",
        "ListTrainings",
        "CancelTraining",
    )

    def __init__(self, target: str, *, timeout: float = 30.0) -> None:
        super().__init__(target, timeout=timeout)
        self.stub = trainer_pb2_grpc.TrainerStub(self.channel)

    def estimate(
        self, owner: str, config: trainer_pb2.TrainingConfig
    ) -> trainer_pb2.TrainingEstimate:
        request = trainer_pb2.EstimateTrainingRequest(owner=owner, config=config)
        return self._call(self.stub.EstimateTraining, request)
