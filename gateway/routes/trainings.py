"""LoRA training jobs: estimate, start, read, list, cancel, and progress as Server-Sent
Events (`job` on each state change, `progress` with step/loss/lr/ETA, `sample` with a PNG).
The trainer owns the jobs; the gateway only relays."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from fastapi.concurrency import iterate_in_threadpool, run_in_threadpool
from fastapi.responses import StreamingResponse
from google.protobuf import json_format
from pydantic import BaseModel, Field

from gateway.backends import Clients, Owner
from gateway.errors import ERROR_RESPONSES, error_body, error_status
from services.common.errors import SdstackError
from services.common.generation.settings import NAME_PATTERN
from services.common.proto.sdstack.v1 import trainer_pb2

router = APIRouter(prefix="/v1/trainings", tags=["trainings"], responses=ERROR_RESPONSES)

JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="Training job id (32 hex).")]
PRESETS = {
    "anime": trainer_pb2.TRAINING_PRESET_ANIME,
    "realistic": trainer_pb2.TRAINING_PRESET_REALISTIC,
    "scene": trainer_pb2.TRAINING_PRESET_SCENE,
}
OPTIMIZERS = {
    "adamw": trainer_pb2.OPTIMIZER_ADAMW,
    "adamw_8bit": trainer_pb2.OPTIMIZER_ADAMW_8BIT,
    "lion": trainer_pb2.OPTIMIZER_LION,
    "prodigy": trainer_pb2.OPTIMIZER_PRODIGY,
}
PRECISIONS = {
    "no": trainer_pb2.MIXED_PRECISION_NO,
    "fp16": trainer_pb2.MIXED_PRECISION_FP16,
    "bf16": trainer_pb2.MIXED_PRECISION_BF16,
}
STATES = {
    value: name.removeprefix("TRAINING_STATE_").lower()
    for name, value in trainer_pb2.TrainingState.items()
}


class TrainingIn(BaseModel):
    """SPEC §4's parameters; unset fields take the preset's or the default value."""

    dataset_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    base_model: str = Field(pattern=NAME_PATTERN, description="Checkpoint to train on.")
    output_name: str = Field(pattern=NAME_PATTERN, description="Name of the LoRA to write.")
    preset: Literal["anime", "realistic", "scene"] | None = None
    network_dim: int | None = Field(None, ge=1, le=256, description="Rank; default 32.")
    network_alpha: float | None = Field(None, gt=0, le=1024, description="Default rank / 2.")
    learning_rate: float | None = Field(None, gt=0, le=10, description="Default 1e-4.")
    unet_lr: float | None = Field(None, gt=0, le=10, description="Default learning_rate.")
    text_encoder_lr: float | None = Field(None, gt=0, le=10, description="Default 5e-5.")
    train_text_encoder: bool = False
    optimizer: Literal["adamw", "adamw_8bit", "lion", "prodigy"] = "adamw"
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial"
    ] = "cosine"
    lr_warmup_steps: int = Field(0, ge=0, le=100_000)
    repeats: int = Field(0, ge=0, le=1000, description="Overrides the dataset's when > 0.")
    epochs: int | None = Field(None, ge=1, le=1000, description="Default 10.")
    batch_size: int | None = Field(None, ge=1, le=64, description="Default 1.")
    resolution: int | None = Field(None, ge=64, le=1024, multiple_of=64, description="Default 512.")
    bucketing: bool = False
    mixed_precision: Literal["no", "fp16", "bf16"] | None = Field(
        None, description="Default fp16 on a GPU, none on the CPU."
    )
    gradient_checkpointing: bool = False
    cache_latents: bool = True
    cache_text_embeddings: bool = True
    noise_offset: float = Field(0.0, ge=0, le=1)
    min_snr_gamma: float = Field(0.0, ge=0, le=100, description="0 disables; typical 5.")
    clip_skip: int | None = Field(None, ge=1, le=12)
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Default random.")
    sample_every_n_steps: int = Field(0, ge=0, le=1_000_000)
    sample_prompts: list[str] = Field(default_factory=list, max_length=8)
    save_every_n_epochs: int = Field(0, ge=0, le=1000)
    max_train_steps: int = Field(0, ge=0, le=1_000_000)
    save_state_every_n_steps: int = Field(0, ge=0, le=1_000_000)
    request_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]{1,64}$")

    def to_config(self) -> trainer_pb2.TrainingConfig:
        fields: dict[str, Any] = self.model_dump(exclude_none=True, exclude={"request_id"})
        if "preset" in fields:
            fields["preset"] = PRESETS[fields["preset"]]
        fields["optimizer"] = OPTIMIZERS[fields["optimizer"]]
        if "mixed_precision" in fields:
            fields["mixed_precision"] = PRECISIONS[fields["mixed_precision"]]
        return trainer_pb2.TrainingConfig(**fields)


class EstimateOut(BaseModel):
    total_steps: int = Field(description="images × repeats × epochs / batch_size.")
    images: int
    repeats: int
    epochs: int
    batch_size: int
    estimated_file_bytes: int = Field(description="LoRA file size for the rank (SD 1.5).")
    warnings: list[str]
    resolved: dict[str, Any] = Field(description="The configuration with presets and defaults.")

    @classmethod
    def from_message(cls, estimate: trainer_pb2.TrainingEstimate) -> EstimateOut:
        return cls(
            total_steps=estimate.total_steps,
            images=estimate.images,
            repeats=estimate.repeats,
            epochs=estimate.epochs,
            batch_size=estimate.batch_size,
            estimated_file_bytes=estimate.estimated_file_bytes,
            warnings=list(estimate.warnings),
            resolved=json_format.MessageToDict(
                estimate.resolved,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            ),
        )


class TrainingOut(BaseModel):
    id: str
    state: str = Field(description="queued, preparing, running, succeeded, failed, cancelled.")
    estimate: EstimateOut
    step: int
    epoch: int
    loss: float
    learning_rate: float
    eta_seconds: float | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    lora_name: str = Field(description="The LoRA written; use it as <lora:name:1> or in a style.")
    lora_file_bytes: int
    error: str
    sample_keys: list[str]
    attempts: int
    resumed_from_step: int

    @classmethod
    def from_message(cls, job: trainer_pb2.TrainingJob) -> TrainingOut:
        def when(field: str) -> datetime | None:
            return getattr(job, field).ToDatetime() if job.HasField(field) else None

        return cls(
            id=job.id,
            state=STATES.get(job.state, "unspecified"),
            estimate=EstimateOut.from_message(job.estimate),
            step=job.step,
            epoch=job.epoch,
            loss=job.loss,
            learning_rate=job.learning_rate,
            eta_seconds=job.eta.ToMilliseconds() / 1000 if job.HasField("eta") else None,
            created_at=when("created_at"),
            started_at=when("started_at"),
            finished_at=when("finished_at"),
            lora_name=job.lora_name,
            lora_file_bytes=job.lora_file_bytes,
            error=job.error,
            sample_keys=list(job.sample_keys),
            attempts=job.attempts,
            resumed_from_step=job.resumed_from_step,
        )


@router.post("/estimate", summary="Total steps, file size and warnings, without starting")
def estimate_training(body: TrainingIn, clients: Clients, who: Owner) -> EstimateOut:
    return EstimateOut.from_message(clients.trainer.estimate(who, body.to_config()))


@router.post("", summary="Start a LoRA training job", status_code=201)
def start_training(body: TrainingIn, clients: Clients, who: Owner) -> TrainingOut:
    job = clients.trainer.start_training(who, body.to_config(), request_id=body.request_id or "")
    return TrainingOut.from_message(job)


@router.get("", summary="Your training jobs, newest first")
def list_trainings(clients: Clients, who: Owner) -> list[TrainingOut]:
    return [TrainingOut.from_message(j) for j in clients.trainer.list_trainings(who)]


@router.get("/{job_id}", summary="A training job: state, step, loss, outcome")
def get_training(job_id: JobId, clients: Clients, who: Owner) -> TrainingOut:
    return TrainingOut.from_message(clients.trainer.get_training(who, job_id))


@router.post("/{job_id}/cancel", summary="Cancel a queued or running training job")
def cancel_training(job_id: JobId, clients: Clients, who: Owner) -> TrainingOut:
    return TrainingOut.from_message(clients.trainer.cancel_training(who, job_id))


@router.get(
    "/{job_id}/events",
    summary="Server-Sent Events: job (state changes), progress, sample; ends at a final state",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def training_events(job_id: JobId, clients: Clients, who: Owner) -> StreamingResponse:
    events: Iterator[trainer_pb2.TrainingEvent] = clients.trainer.watch_training(who, job_id)
    first = await run_in_threadpool(next, events)  # a missing job answers 404, not a stream

    async def lines() -> AsyncIterator[str]:
        yield _sse(first)
        try:
            async for event in iterate_in_threadpool(events):
                yield _sse(event)
        except SdstackError as error:
            body = error_body(error.reason, error.message) | {"status": error_status(error)}
            yield f"event: error\ndata: {json.dumps(body)}\n\n"
        finally:
            events.close()  # type: ignore[attr-defined]

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(lines(), media_type="text/event-stream", headers=headers)


def _sse(event: trainer_pb2.TrainingEvent) -> str:
    kind = event.WhichOneof("event")
    if kind == "progress":
        p = event.progress
        data: dict[str, Any] = {
            "step": p.step,
            "total_steps": p.total_steps,
            "epoch": p.epoch,
            "loss": p.loss,
            "learning_rate": p.learning_rate,
            "eta_seconds": p.eta.ToMilliseconds() / 1000 if p.HasField("eta") else None,
        }
    elif kind == "sample":
        s = event.sample
        png = "data:image/png;base64," + base64.b64encode(s.png).decode()
        data = {"step": s.step, "prompt": s.prompt, "image": png}
    else:
        kind = "job"
        data = TrainingOut.from_message(event.job).model_dump(mode="json")
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"
