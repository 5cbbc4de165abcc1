"""Datasets for LoRA training: upload (a zip, or several pictures with `.txt` captions;
`N_concept/` folders set repeats), read, caption and tag edits, preparation, auto-tagging.
The trainer owns the datasets; the gateway only relays."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Path, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from gateway.backends import Clients, Owner
from gateway.errors import ERROR_RESPONSES
from services.common.errors import InvalidArgument
from services.common.proto.sdstack.v1 import trainer_pb2

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=ERROR_RESPONSES)

DatasetId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="Dataset id (32 hex).")]
CROPS = {
    "center": trainer_pb2.CROP_MODE_CENTER,
    "subject": trainer_pb2.CROP_MODE_SUBJECT,
    "bucket": trainer_pb2.CROP_MODE_BUCKET,
}


class ImageOut(BaseModel):
    path: str = Field(description="Path inside the dataset, e.g. `10_office/img001.png`.")
    caption: str
    width: int
    height: int
    repeats: int
    thumbnail: str | None = Field(None, description="WebP data URL, when asked for.")


class TagCountOut(BaseModel):
    tag: str
    count: int = Field(description="Images whose caption holds the tag.")


class DatasetOut(BaseModel):
    id: str
    name: str
    created_at: datetime | None
    prepared_resolution: int = Field(description="0 when not prepared.")
    images: list[ImageOut]
    tag_frequency: list[TagCountOut] = Field(description="Most frequent first.")

    @classmethod
    def from_message(cls, dataset: trainer_pb2.Dataset) -> DatasetOut:
        return cls(
            id=dataset.id,
            name=dataset.name,
            created_at=dataset.created_at.ToDatetime() if dataset.HasField("created_at") else None,
            prepared_resolution=dataset.prepared_resolution,
            images=[
                ImageOut(
                    path=i.path,
                    caption=i.caption,
                    width=i.width,
                    height=i.height,
                    repeats=i.repeats,
                    thumbnail="data:image/webp;base64," + base64.b64encode(i.thumbnail).decode()
                    if i.thumbnail
                    else None,
                )
                for i in dataset.images
            ],
            tag_frequency=[TagCountOut(tag=t.tag, count=t.count) for t in dataset.tag_frequency],
        )


class CaptionIn(BaseModel):
    path: str = Field(min_length=1, max_length=1024, description="Image path in the dataset.")
    caption: str = Field(max_length=2000)


class TagEditIn(BaseModel):
    paths: list[str] = Field(default_factory=list, description="Images to edit; empty = all.")
    add: list[str] = Field(default_factory=list, max_length=200)
    remove: list[str] = Field(default_factory=list, max_length=200)
    replace: dict[str, str] = Field(default_factory=dict, description="old tag → new tag")
    trigger_word: str = Field("", max_length=200, description="Prepended to every caption.")


class PrepareIn(BaseModel):
    resolution: int = Field(512, ge=64, le=1024, multiple_of=64)
    crop: Literal["center", "subject", "bucket"] = "center"
    bucket_min: int = Field(256, ge=64, le=4096)
    bucket_max: int = Field(1024, ge=64, le=4096)
    bucket_step: Literal[8, 16, 32, 64, 128] = 64


class AutoTagIn(BaseModel):
    tagger: str = Field("", max_length=128, description="Default: the first tagger in the store.")
    threshold: float = Field(0.35, gt=0, lt=1)
    character_threshold: float = Field(0.85, gt=0, lt=1)
    overwrite: bool = Field(False, description="Replace captions instead of merging tags.")


@router.post(
    "", summary="Upload a dataset (a zip, or pictures with .txt captions)", status_code=201
)
async def create_dataset(
    clients: Clients,
    who: Owner,
    files: Annotated[list[UploadFile], Form(description="A .zip, or pictures and .txt files.")],
    name: Annotated[str, Form(min_length=1, max_length=100)],
    default_repeats: Annotated[int, Form(ge=0, le=1000)] = 0,
) -> DatasetOut:
    parts = []
    for upload in files:
        if not upload.filename:
            raise InvalidArgument("files", "every file needs a file name")
        parts.append((upload.filename, await upload.read()))
    dataset = await run_in_threadpool(
        clients.trainer.create_dataset, who, name, parts, default_repeats=default_repeats
    )
    return DatasetOut.from_message(dataset)


@router.get("", summary="Your datasets")
def list_datasets(clients: Clients, who: Owner) -> list[DatasetOut]:
    return [DatasetOut.from_message(d) for d in clients.trainer.list_datasets(who)]


@router.get("/{dataset_id}", summary="A dataset: images, captions, repeats, tag frequencies")
def get_dataset(
    dataset_id: DatasetId,
    clients: Clients,
    who: Owner,
    thumbnails: Annotated[bool, Query(description="Include WebP thumbnails.")] = False,
) -> DatasetOut:
    dataset = clients.trainer.get_dataset(who, dataset_id, with_thumbnails=thumbnails)
    return DatasetOut.from_message(dataset)


@router.delete("/{dataset_id}", summary="Delete a dataset", status_code=204)
def delete_dataset(dataset_id: DatasetId, clients: Clients, who: Owner) -> None:
    clients.trainer.delete_dataset(who, dataset_id)


@router.put("/{dataset_id}/captions", summary="Replace one image's caption")
def update_caption(
    dataset_id: DatasetId, body: CaptionIn, clients: Clients, who: Owner
) -> ImageOut:
    image = clients.trainer.update_caption(who, dataset_id, body.path, body.caption)
    return ImageOut(
        path=image.path,
        caption=image.caption,
        width=image.width,
        height=image.height,
        repeats=image.repeats,
    )


@router.post("/{dataset_id}/tags", summary="Bulk tag edit: add, remove, replace, trigger word")
def edit_tags(dataset_id: DatasetId, body: TagEditIn, clients: Clients, who: Owner) -> DatasetOut:
    dataset = clients.trainer.edit_tags(
        who,
        dataset_id,
        paths=body.paths,
        add=body.add,
        remove=body.remove,
        replace=body.replace,
        trigger_word=body.trigger_word,
    )
    return DatasetOut.from_message(dataset)


@router.post("/{dataset_id}/prepare", summary="Crop/resize to the training resolution, or bucket")
def prepare_dataset(
    dataset_id: DatasetId, body: PrepareIn, clients: Clients, who: Owner
) -> DatasetOut:
    request = trainer_pb2.PrepareDatasetRequest(
        owner=who,
        dataset_id=dataset_id,
        resolution=body.resolution,
        crop=CROPS[body.crop],
        bucket_min=body.bucket_min,
        bucket_max=body.bucket_max,
        bucket_step=body.bucket_step,
    )
    return DatasetOut.from_message(clients.trainer.prepare_dataset(request))


@router.post("/{dataset_id}/auto-tag", summary="Caption every image with a WD14 ONNX tagger")
def auto_tag(dataset_id: DatasetId, body: AutoTagIn, clients: Clients, who: Owner) -> DatasetOut:
    request = trainer_pb2.AutoTagRequest(
        owner=who,
        dataset_id=dataset_id,
        tagger=body.tagger,
        threshold=body.threshold,
        character_threshold=body.character_threshold,
        overwrite=body.overwrite,
    )
    return DatasetOut.from_message(clients.trainer.auto_tag(request))
