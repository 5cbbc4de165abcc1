"""The training configuration as one domain value: protobuf → domain → protobuf, domain →
stored job → domain, jobs stored as protobuf JSON before still read, and a broken field
refused at the servicer's edge with its name and rule, before anything else is read."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from unittest.mock import Mock

import pytest
from sqlalchemy import insert

from services.common.errors import FieldViolation, InvalidArgument
from services.common.proto.sdstack.v1 import trainer_pb2
from services.common.sql import create_engine_for
from services.trainer.config import (
    MixedPrecision,
    Optimizer,
    Preset,
    RequestedConfig,
    TrainingConfig,
    resolve_config,
)
from services.trainer.datasets import DatasetStore
from services.trainer.jobs import JobStore, training_jobs
from services.trainer.messages import (
    config_from_message,
    config_message,
    estimate_from_message,
    estimate_message,
)
from services.trainer.plan import DatasetShape, estimate
from services.trainer.servicer import TrainerServicer
from services.trainer.trainings import Trainings

# What the trainer stored for a job before the config was a domain value: the estimate's
# protobuf JSON (preset ANIME, rank 16, lr 0.01, LION, text encoder trained, 20 images).
LEGACY_ESTIMATE = (
    '{"totalSteps": "2400", "images": 20, "repeats": 12, "epochs": 10, "batchSize": 1, '
    '"estimatedFileBytes": "17342464", "resolved": {"datasetId": '
    '"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "baseModel": "tiny", "outputName": "office", '
    '"preset": "TRAINING_PRESET_ANIME", "networkDim": 16, "networkAlpha": 8.0, '
    '"learningRate": 0.01, "unetLr": 0.01, "textEncoderLr": 5e-05, "trainTextEncoder": true, '
    '"optimizer": "OPTIMIZER_LION", "lrScheduler": "cosine", "repeats": 12, "epochs": 10, '
    '"batchSize": 1, "resolution": 512, "cacheLatents": true, "cacheTextEmbeddings": false, '
    '"noiseOffset": 0.05, "clipSkip": 2, "seed": "42", "samplePrompts": ["sks stripes"]}}'
)


def _asked() -> trainer_pb2.TrainingConfig:
    """A request as a client sends it: most fields unset, floats in float32."""
    return trainer_pb2.TrainingConfig(
        dataset_id="a" * 32,
        base_model="tiny",
        output_name="office",
        preset=trainer_pb2.TRAINING_PRESET_ANIME,
        network_dim=16,
        learning_rate=0.01,
        optimizer=trainer_pb2.OPTIMIZER_LION,
        train_text_encoder=True,
        mixed_precision=trainer_pb2.MIXED_PRECISION_BF16,
        noise_offset=0.05,
        sample_prompts=["sks stripes"],
        seed=42,
    )


def _store(tmp_path: Path) -> JobStore:
    jobs = JobStore(create_engine_for(f"sqlite:///{tmp_path / 'jobs.db'}"))
    jobs.create_schema()
    return jobs


def test_the_wire_config_maps_to_the_domain_and_back_unchanged() -> None:
    resolved = resolve_config(config_from_message(_asked()))
    assert resolved.preset is Preset.ANIME and resolved.optimizer is Optimizer.LION
    assert resolved.mixed_precision is MixedPrecision.BF16
    assert (resolved.repeats, resolved.clip_skip, resolved.network_alpha) == (12, 2, 8.0)
    assert resolved.learning_rate == resolved.unet_lr == 0.01  # the decimal sent, not float32's
    assert resolved.noise_offset == 0.05 and not resolved.cache_text_embeddings
    message = config_message(resolved)
    assert all(message.HasField(name) for name in ("network_alpha", "learning_rate", "seed"))
    again = resolve_config(config_from_message(message))
    assert again == resolved
    assert config_message(again) == message


def test_a_resolved_config_is_stored_and_reloaded_as_it_was(tmp_path: Path) -> None:
    resolved = resolve_config(config_from_message(_asked()))
    assert TrainingConfig.from_dict(json.loads(json.dumps(resolved.to_dict()))) == resolved
    planned = estimate(resolved, DatasetShape([1] * 20, [(512, 512)] * 20))
    assert estimate_from_message(estimate_message(planned)) == planned
    jobs = _store(tmp_path)
    job, created = jobs.create("ada", "r1", planned)
    assert created and jobs.find(job.id).estimate == planned
    assert jobs.find(job.id).config == resolved


def test_a_job_stored_as_protobuf_json_is_still_read(tmp_path: Path) -> None:
    jobs = _store(tmp_path)
    row = {"id": "b" * 32, "owner": "ada", "request_id": "old", "state": 1}
    with jobs.engine.begin() as connection:
        connection.execute(
            insert(training_jobs).values(
                **row, estimate=LEGACY_ESTIMATE, created_at=datetime(2026, 1, 1)
            )
        )
    job = jobs.find("b" * 32)
    asked = resolve_config(config_from_message(_asked()))
    assert job.config == replace(asked, mixed_precision=MixedPrecision.AUTO)  # it asked none
    assert (job.estimate.total_steps, job.estimate.images, job.estimate.repeats) == (2400, 20, 12)
    assert job.estimate.estimated_file_bytes == 17342464 and job.estimate.warnings == ()


def test_a_broken_field_is_refused_at_the_edge_with_its_name_and_rule() -> None:
    datasets = Mock(spec=DatasetStore)
    trainings = Trainings(Mock(spec=JobStore), datasets, Mock(), None, local_device=None)
    servicer = TrainerServicer(Mock(), Mock(), trainings)
    broken = _asked()
    broken.network_dim = 300
    broken.optimizer = 9  # a number this version does not know
    request = trainer_pb2.EstimateTrainingRequest(owner="ada", config=broken)
    with pytest.raises(InvalidArgument) as caught:
        servicer.EstimateTraining(request, None)
    assert caught.value.violations == [
        FieldViolation("config.network_dim", "must be in 1..256"),
        FieldViolation("config.optimizer", "must be ADAMW, ADAMW_8BIT, LION or PRODIGY"),
    ]
    datasets.get.assert_not_called()  # refused before the dataset is looked up


def test_a_request_left_unset_takes_every_default() -> None:
    resolved = resolve_config(RequestedConfig("a" * 32, "tiny", "office", seed=1))
    assert resolved == resolve_config(config_from_message(config_message(resolved)))
    assert (resolved.network_dim, resolved.network_alpha, resolved.epochs) == (32, 16.0, 10)
    assert resolved.preset is Preset.CUSTOM and resolved.repeats == 0
