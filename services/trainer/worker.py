"""One training job, run to its end in a process of its own.

`python -m services.trainer.worker <job id> [--parent-pid N]`: a child of the trainer
service locally (a crash here never takes the gRPC server down), or the command of a
Kubernetes Job (`services.trainer.job`). It reads the job from SQL, the dataset and base
model from the store, trains, and hands the finished LoRA to the generator through its
ImportModel call (the generator is the one writer of the `loras` bucket, so the file is
validated and listed like any upload). Progress, samples and the outcome go back to SQL.

Saved state lives in `<data dir>/trainings/<job id>/state/`; with the Kubernetes runner,
whose pods have no lasting disk, each save is also copied to the `datasets` bucket and
fetched back when a retried pod starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from services.common.clients.generator import GeneratorClient
from services.common.config import Settings, load_settings
from services.common.errors import ConfigError, SdstackError
from services.common.logs import configure_logging
from services.common.malloc_tuning import keep_freed_memory_for_reuse
from services.common.object_store import DATASETS_BUCKET, ObjectStore
from services.common.proto.sdstack.v1 import common_pb2
from services.common.sd.checkpoint_loader import load_pipeline
from services.common.sd.devices import pick_device
from services.common.sd.model_registry import ModelRegistry
from services.common.sql import create_engine_for
from services.common.wiring import connect_object_store
from services.trainer import jobs as job_states
from services.trainer import state
from services.trainer.datasets import Dataset, DatasetStore
from services.trainer.jobs import JobRecord, JobStore
from services.trainer.lora_format import kohya_metadata, write_lora
from services.trainer.training import LoraTrainer, Stopped, TrainingHooks, TrainingImage

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5
CANCEL_POLL_S = 1.0
EXIT_OK, EXIT_LOST_PARENT = 0, 3


def training_dir(settings: Settings, job_id: str) -> Path:
    return settings.data_dir / "trainings" / job_id


@dataclass
class JobContext:
    """What a running job talks to."""

    settings: Settings
    jobs: JobStore
    store: ObjectStore
    job: JobRecord
    parent_pid: int | None
    mirror_state: bool
    _last_progress: float = 0.0
    _last_cancel_check: float = 0.0
    _cancelled: bool = False
    _started_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @property
    def state_dir(self) -> Path:
        return training_dir(self.settings, self.job.id) / "state"

    def should_stop(self) -> bool:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            log.warning("the trainer service that started this job is gone; stopping")
            return True
        now = time.monotonic()
        if now - self._last_cancel_check >= CANCEL_POLL_S:
            self._last_cancel_check = now
            self._cancelled = self.jobs.find(self.job.id).cancel_requested
        return self._cancelled

    def on_progress(self, step: int, epoch: int, loss: float, lr: float, eta: float) -> None:
        now = time.monotonic()
        last = step == self.job.estimate.total_steps
        if last or now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            self.jobs.progress(self.job.id, step=step, epoch=epoch, loss=loss, lr=lr, eta=eta)
        if self.mirror_state:
            self._mirror_new_saves()

    def on_sample(self, step: int, prompt: str, png: bytes) -> None:
        index = sum(1 for key in self.jobs.find(self.job.id).sample_keys if f"/{step:09d}-" in key)
        key = f"trainings/{self.job.id}/samples/{step:09d}-{index}.png"
        self.store.put(
            DATASETS_BUCKET, key, png, content_type="image/png", metadata={"prompt": _ascii(prompt)}
        )
        self.jobs.add_sample(self.job.id, key)

    def _mirror_new_saves(self) -> None:
        for step in state.saved_steps(self.state_dir)[:1]:
            key = f"trainings/{self.job.id}/state/state-{step:09d}.pt"
            if not self.store.exists(DATASETS_BUCKET, key):
                self.store.put_file(DATASETS_BUCKET, key, state.state_path(self.state_dir, step))

    def fetch_mirrored_state(self) -> None:
        if state.saved_steps(self.state_dir):
            return
        prefix = f"trainings/{self.job.id}/state/"
        keys = sorted(e.key for e in self.store.list(DATASETS_BUCKET, prefix=prefix))
        if keys:
            name = keys[-1].removeprefix(prefix)
            self.store.download(DATASETS_BUCKET, keys[-1], self.state_dir / name)


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode()[:2000]


def load_base_pipeline(
    settings: Settings, store: ObjectStore, name: str
) -> tuple[StableDiffusionPipeline, str]:
    """The base checkpoint from the store (cached on local disk by content), loaded fp32."""
    registry = ModelRegistry(store)
    model = registry.find(common_pb2.MODEL_KIND_CHECKPOINT, name)
    path, _ = registry.local_copy(model, settings.resolved_model_cache_dir / "files")
    pipe = load_pipeline(
        path,
        config_root=settings.resolved_model_cache_dir / "configs",
        tokenizer_dir=settings.resolved_clip_tokenizer_dir,
    )
    return pipe, model.sha256


def _images(datasets: DatasetStore, dataset: Dataset) -> list[TrainingImage]:
    return [
        TrainingImage(datasets.picture(image), image.caption, image.repeats)
        for image in dataset.images
    ]


def run_job(settings: Settings, job_id: str, parent_pid: int | None = None) -> int:
    """Runs the job to a final state (or until its parent dies); returns the exit status."""
    jobs = JobStore(create_engine_for(settings.resolved_database_url))
    job = jobs.find(job_id)
    if job.final:
        return EXIT_OK
    store = connect_object_store(settings, [DATASETS_BUCKET])
    context = JobContext(
        settings, jobs, store, job, parent_pid, settings.trainer_runner == "kubernetes"
    )
    try:
        _train(context)
    except Stopped:
        if context.parent_pid is not None and os.getppid() != context.parent_pid:
            return EXIT_LOST_PARENT
        jobs.finish(job_id, job_states.CANCELLED)
        log.info("job %s cancelled", job_id)
    except SdstackError as error:
        jobs.finish(job_id, job_states.FAILED, error.message)
        log.info("job %s failed: %s", job_id, error.message)
    except Exception as error:  # the job fails with a reason; the worker exits cleanly
        log.exception("job %s crashed", job_id)
        jobs.finish(job_id, job_states.FAILED, f"internal error: {type(error).__name__}: {error}")
    return EXIT_OK


def _train(context: JobContext) -> None:
    settings, jobs, job = context.settings, context.jobs, context.job
    config = job.config
    device = pick_device(settings.device)
    datasets = DatasetStore(
        context.store,
        max_pixels=settings.max_pixels,
        max_bytes=settings.trainer_max_dataset_bytes,
        max_files=settings.trainer_max_dataset_files,
    )
    dataset = datasets.get(job.owner, config.dataset_id)
    pipe, base_hash = load_base_pipeline(settings, context.store, config.base_model)
    if context.mirror_state:
        context.fetch_mirrored_state()
    trainer = LoraTrainer(
        pipe,
        _images(datasets, dataset),
        config,
        total_steps=job.estimate.total_steps,
        state_dir=context.state_dir,
        device=device,
        hooks=TrainingHooks(
            on_progress=context.on_progress,
            on_sample=context.on_sample,
            on_epoch_lora=lambda epoch, step, tensors: _publish(
                context,
                dataset,
                base_hash,
                f"{config.output_name}-{epoch:06d}",
                tensors,
                step,
                epoch,
                trainer.precision.name,
            ),
            on_start=lambda step: jobs.start_running(job.id, step),
            should_stop=context.should_stop,
        ),
    )
    result = trainer.train()
    _publish(
        context,
        dataset,
        base_hash,
        config.output_name,
        result.tensors,
        result.steps,
        result.epochs,
        result.mixed_precision,
    )
    jobs.finish(job.id, job_states.SUCCEEDED)
    log.info("job %s succeeded: %s", job.id, config.output_name)


def _publish(
    context: JobContext,
    dataset: Dataset,
    base_hash: str,
    name: str,
    tensors: dict[str, torch.Tensor],
    step: int,
    epoch: int,
    mixed_precision: str,
) -> None:
    """Writes the LoRA with its metadata and imports it through the generator."""
    job = context.job
    config = job.config
    settings = context.settings
    described = {
        "network_dim": config.network_dim,
        "network_alpha": config.network_alpha,
        "learning_rate": config.learning_rate,
        "unet_lr": config.unet_lr,
        "text_encoder_lr": config.text_encoder_lr,
        "train_text_encoder": config.train_text_encoder,
        "epochs": config.epochs,
        "epoch_done": epoch,
        "total_steps": job.estimate.total_steps,
        "batch_size": config.batch_size,
        "lr_scheduler": config.lr_scheduler,
        "lr_warmup_steps": config.lr_warmup_steps,
        "optimizer": config.optimizer.name,
        "resolution": config.resolution,
        "bucketing": config.bucketing,
        "gradient_checkpointing": config.gradient_checkpointing,
        "cache_latents": config.cache_latents,
        "cache_text_embeddings": config.cache_text_embeddings,
        "clip_skip": config.clip_skip,
        "seed": config.seed,
        "noise_offset": round(config.noise_offset, 6),
        "min_snr_gamma": round(config.min_snr_gamma, 6),
        "repeats": config.repeats,
        "preset": config.preset.value,
        "dataset_id": config.dataset_id,
    }
    metadata = kohya_metadata(
        output_name=name,
        config=described,
        steps=step,
        images=len(dataset.images),
        tag_frequency=dataset.folder_frequencies(),
        dataset_dirs=dataset.folder_counts(),
        base_model=config.base_model,
        base_model_hash=base_hash,
        mixed_precision=mixed_precision,
        started_at=context._started_at,
    )
    with tempfile.TemporaryDirectory(prefix="sdstack-lora-") as folder:
        path = Path(folder) / f"{name}.safetensors"
        size = write_lora(path, tensors, metadata)
        with GeneratorClient(settings.target("generator"), timeout=600) as generator:
            generator.import_model(
                path,
                name=name,
                kind=common_pb2.MODEL_KIND_LORA,
                file_format="safetensors",
                overwrite=True,
            )
    context.jobs.set_lora(job.id, name, size)
    log.info("job %s wrote LoRA %s (%d bytes, step %d)", job.id, name, size, step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one sdstack training job.")
    parser.add_argument("job_id")
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as error:
        sys.stderr.write(f"trainer worker: configuration error: {error}\n")
        return 2
    configure_logging("trainer-worker", settings.log_level, settings.log_format)
    keep_freed_memory_for_reuse()
    return run_job(settings, args.job_id, args.parent_pid)


if __name__ == "__main__":
    raise SystemExit(main())
