"""Typed client of the Trainer service."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

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

    # -- datasets ---------------------------------------------------------------------------

    def create_dataset(
        self,
        owner: str,
        name: str,
        files: Iterable[tuple[str, bytes]],
        *,
        default_repeats: int = 0,
        timeout: float | None = None,
    ) -> trainer_pb2.Dataset:
        """Uploads (path, bytes) files: pictures, `.txt` captions, or `.zip` archives."""
        header = trainer_pb2.CreateDatasetHeader(
            owner=owner, name=name, default_repeats=default_repeats
        )

        def parts() -> Iterator[trainer_pb2.CreateDatasetRequest]:
            yield trainer_pb2.CreateDatasetRequest(header=header)
            for path, data in files:
                file = trainer_pb2.DatasetFile(path=path, data=data)
                yield trainer_pb2.CreateDatasetRequest(file=file)

        return self._call(self.stub.CreateDataset, parts(), timeout or max(self.timeout, 600))

    def get_dataset(
        self, owner: str, dataset_id: str, *, with_thumbnails: bool = False
    ) -> trainer_pb2.Dataset:
        request = trainer_pb2.GetDatasetRequest(
            owner=owner, dataset_id=dataset_id, with_thumbnails=with_thumbnails
        )
        return self._call(self.stub.GetDataset, request)

    def list_datasets(self, owner: str) -> list[trainer_pb2.Dataset]:
        reply = self._call(self.stub.ListDatasets, trainer_pb2.ListDatasetsRequest(owner=owner))
        return list(reply.datasets)

    def delete_dataset(self, owner: str, dataset_id: str) -> None:
        request = trainer_pb2.DeleteDatasetRequest(owner=owner, dataset_id=dataset_id)
        self._call(self.stub.DeleteDataset, request)

    def update_caption(
        self, owner: str, dataset_id: str, path: str, caption: str
    ) -> trainer_pb2.DatasetImage:
        request = trainer_pb2.UpdateCaptionRequest(
            owner=owner, dataset_id=dataset_id, path=path, caption=caption
        )
        return self._call(self.stub.UpdateCaption, request)

    def edit_tags(
        self,
        owner: str,
        dataset_id: str,
        *,
        paths: Sequence[str] = (),
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
        replace: Mapping[str, str] | None = None,
        trigger_word: str = "",
    ) -> trainer_pb2.Dataset:
        request = trainer_pb2.EditTagsRequest(
            owner=owner,
            dataset_id=dataset_id,
            paths=list(paths),
            add=list(add),
            remove=list(remove),
            replace=dict(replace or {}),
            trigger_word=trigger_word,
        )
        return self._call(self.stub.EditTags, request)

    def prepare_dataset(
        self, request: trainer_pb2.PrepareDatasetRequest, *, timeout: float | None = None
    ) -> trainer_pb2.Dataset:
        return self._call(self.stub.PrepareDataset, request, timeout or max(self.timeout, 600))

    def auto_tag(
        self, request: trainer_pb2.AutoTagRequest, *, timeout: float | None = None
    ) -> trainer_pb2.Dataset:
        return self._call(self.stub.AutoTag, request, timeout or max(self.timeout, 600))

    # -- trainings --------------------------------------------------------------------------

    def estimate(
        self, owner: str, config: trainer_pb2.TrainingConfig
    ) -> trainer_pb2.TrainingEstimate:
        request = trainer_pb2.EstimateTrainingRequest(owner=owner, config=config)
        return self._call(self.stub.EstimateTraining, request)

    def start_training(
        self, owner: str, config: trainer_pb2.TrainingConfig, *, request_id: str = ""
    ) -> trainer_pb2.TrainingJob:
        request = trainer_pb2.StartTrainingRequest(
            owner=owner, config=config, request_id=request_id
        )
        return self._call(self.stub.StartTraining, request)

    def get_training(self, owner: str, job_id: str) -> trainer_pb2.TrainingJob:
        request = trainer_pb2.GetTrainingRequest(owner=owner, job_id=job_id)
        return self._call(self.stub.GetTraining, request)

    def list_trainings(self, owner: str) -> list[trainer_pb2.TrainingJob]:
        reply = self._call(self.stub.ListTrainings, trainer_pb2.ListTrainingsRequest(owner=owner))
        return list(reply.jobs)

    def cancel_training(self, owner: str, job_id: str) -> trainer_pb2.TrainingJob:
        request = trainer_pb2.CancelTrainingRequest(owner=owner, job_id=job_id)
        return self._call(self.stub.CancelTraining, request)

    def watch_training(
        self, owner: str, job_id: str, *, timeout: float = 24 * 3600.0
    ) -> Iterator[trainer_pb2.TrainingEvent]:
        """The job now, then progress, samples and state changes until a final state;
        closing the iterator ends the stream."""
        request = trainer_pb2.WatchTrainingRequest(owner=owner, job_id=job_id)
        return self._stream(self.stub.WatchTraining, request, timeout)
