"""The Trainer gRPC servicer: protobuf ⇄ domain calls, nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.errors import InvalidArgument
from services.common.proto.sdstack.v1 import trainer_pb2, trainer_pb2_grpc
from services.trainer.datasets import Dataset, DatasetImage, DatasetStore, check_dataset_id
from services.trainer.fitting import buckets_for
from services.trainer.jobs import JobRecord
from services.trainer.messages import config_from_message, estimate_message
from services.trainer.tagger import (
    DEFAULT_CHARACTER_THRESHOLD,
    DEFAULT_THRESHOLD,
    TaggerStore,
)
from services.trainer.tags import TagEdit
from services.trainer.trainings import Progress, Sample, Trainings

CROPS = {
    trainer_pb2.CROP_MODE_UNSPECIFIED: "center",
    trainer_pb2.CROP_MODE_CENTER: "center",
    trainer_pb2.CROP_MODE_SUBJECT: "subject",
    trainer_pb2.CROP_MODE_BUCKET: "bucket",
}


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def image_message(image: DatasetImage, thumbnail: bytes = b"") -> trainer_pb2.DatasetImage:
    return trainer_pb2.DatasetImage(
        path=image.path,
        caption=image.caption,
        width=image.width,
        height=image.height,
        repeats=image.repeats,
        thumbnail=thumbnail,
    )


def dataset_message(dataset: Dataset, store: DatasetStore | None = None) -> trainer_pb2.Dataset:
    return trainer_pb2.Dataset(
        id=dataset.id,
        owner=dataset.owner,
        name=dataset.name,
        created_at=_timestamp(dataset.created_at),
        images=[
            image_message(image, store.thumbnail(image) if store else b"")
            for image in dataset.images
        ],
        tag_frequency=[
            trainer_pb2.TagCount(tag=tag, count=count) for tag, count in dataset.tag_frequency()
        ],
        prepared_resolution=dataset.prepared_resolution,
    )


def _duration(seconds: float | None) -> Duration | None:
    if seconds is None:
        return None
    duration = Duration()
    duration.FromMilliseconds(round(seconds * 1000))
    return duration


def job_message(job: JobRecord) -> trainer_pb2.TrainingJob:
    return trainer_pb2.TrainingJob(
        id=job.id,
        owner=job.owner,
        state=job.state,  # type: ignore[arg-type]
        estimate=estimate_message(job.estimate),
        step=job.step,
        epoch=job.epoch,
        loss=job.loss,
        learning_rate=job.learning_rate,
        eta=_duration(job.eta_seconds),
        created_at=_timestamp(job.created_at),
        started_at=_timestamp(job.started_at),
        finished_at=_timestamp(job.finished_at),
        lora_name=job.lora_name,
        error=job.error,
        sample_keys=list(job.sample_keys),
        attempts=job.attempts,
        resumed_from_step=job.resumed_from_step,
        lora_file_bytes=job.lora_file_bytes,
    )


def _files(
    requests: Iterator[trainer_pb2.CreateDatasetRequest],
) -> Iterator[tuple[str, bytes]]:
    for request in requests:
        if not request.HasField("file"):
            raise InvalidArgument("file", "every message after the first must be a file")
        yield request.file.path, request.file.data


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, datasets: DatasetStore, taggers: TaggerStore, trainings: Trainings) -> None:
        self.datasets = datasets
        self.taggers = taggers
        self.trainings = trainings

    # -- datasets ---------------------------------------------------------------------------

    def CreateDataset(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument("header", "the first message must be the header")
        header = first.header
        dataset = self.datasets.create(
            header.owner, header.name, header.default_repeats, _files(request_iterator)
        )
        return dataset_message(dataset)

    def GetDataset(self, request, context):
        dataset = self.datasets.get(request.owner, request.dataset_id)
        return dataset_message(dataset, self.datasets if request.with_thumbnails else None)

    def ListDatasets(self, request, context):
        found = self.datasets.list(request.owner)
        return trainer_pb2.ListDatasetsResponse(datasets=[dataset_message(d) for d in found])

    def DeleteDataset(self, request, context):
        self.datasets.delete(request.owner, request.dataset_id)
        return trainer_pb2.DeleteDatasetResponse()

    def UpdateCaption(self, request, context):
        image = self.datasets.update_caption(
            request.owner, request.dataset_id, request.path, request.caption
        )
        return image_message(image)

    def EditTags(self, request, context):
        edit = TagEdit(
            add=[t.strip() for t in request.add],
            remove=[t.strip() for t in request.remove],
            replace={k.strip(): v.strip() for k, v in request.replace.items()},
            trigger_word=request.trigger_word.strip(),
        )
        dataset = self.datasets.edit_tags(
            request.owner, request.dataset_id, list(request.paths), edit
        )
        return dataset_message(dataset)

    def PrepareDataset(self, request, context):
        resolution = request.resolution or 512
        if not (64 <= resolution <= 1024 and resolution % 64 == 0):
            raise InvalidArgument("resolution", "must be a multiple of 64 in 64..1024")
        crop = CROPS.get(request.crop)
        if crop is None:
            raise InvalidArgument("crop", "must be CENTER, SUBJECT or BUCKET")
        bounds = (request.bucket_min or 256, request.bucket_max or 1024, request.bucket_step or 64)
        if not (64 <= bounds[0] <= bounds[1] <= 4096 and bounds[2] in (8, 16, 32, 64, 128)):
            raise InvalidArgument(
                "bucket_min", "bounds must satisfy 64 ≤ min ≤ max ≤ 4096, step 8/16/32/64/128"
            )
        buckets = buckets_for(resolution, *bounds) if crop == "bucket" else []
        dataset = self.datasets.prepare(
            request.owner, request.dataset_id, resolution, crop, buckets
        )
        return dataset_message(dataset)

    def AutoTag(self, request, context):
        threshold = request.threshold if request.HasField("threshold") else DEFAULT_THRESHOLD
        character = (
            request.character_threshold
            if request.HasField("character_threshold")
            else DEFAULT_CHARACTER_THRESHOLD
        )
        for field, value in (("threshold", threshold), ("character_threshold", character)):
            if not 0 < value < 1:
                raise InvalidArgument(field, "must be in (0, 1)")
        check_dataset_id(request.dataset_id)
        dataset = self.datasets.get(request.owner, request.dataset_id)
        tagger = self.taggers.load(request.tagger)
        found = {
            image.path: tagger.tag(self.datasets.picture(image), threshold, character)
            for image in dataset.images
        }
        updated = self.datasets.set_captions(
            request.owner, request.dataset_id, found, request.overwrite
        )
        return dataset_message(updated)

    # -- trainings --------------------------------------------------------------------------

    def EstimateTraining(self, request, context):
        config = config_from_message(request.config)
        return estimate_message(self.trainings.estimate(request.owner, config))

    def StartTraining(self, request, context):
        config = config_from_message(request.config)
        return job_message(self.trainings.start(request.owner, request.request_id, config))

    def GetTraining(self, request, context):
        return job_message(self.trainings.get(request.owner, request.job_id))

    def ListTrainings(self, request, context):
        found = self.trainings.list(request.owner)
        return trainer_pb2.ListTrainingsResponse(jobs=[job_message(j) for j in found])

    def CancelTraining(self, request, context):
        return job_message(self.trainings.cancel(request.owner, request.job_id))

    def WatchTraining(self, request, context: grpc.ServicerContext):
        for event in self.trainings.watch(request.owner, request.job_id, context.is_active):
            yield _event(request.job_id, event)


def _event(job_id: str, event: JobRecord | Progress | Sample) -> trainer_pb2.TrainingEvent:
    if isinstance(event, Progress):
        progress = trainer_pb2.TrainingProgress(
            step=event.step,
            total_steps=event.total_steps,
            epoch=event.epoch,
            loss=event.loss,
            learning_rate=event.learning_rate,
            eta=_duration(event.eta_seconds),
        )
        return trainer_pb2.TrainingEvent(job_id=job_id, progress=progress)
    if isinstance(event, Sample):
        sample = trainer_pb2.TrainingSample(step=event.step, prompt=event.prompt, png=event.png)
        return trainer_pb2.TrainingEvent(job_id=job_id, sample=sample)
    return trainer_pb2.TrainingEvent(job_id=job_id, job=job_message(event))
