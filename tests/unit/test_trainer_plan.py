"""Training plans: presets and defaults, the step formula, file size and warnings;
tag edits; bucketing and crops; atomic saved state; the Kubernetes Job manifest; the
WD14-style tagger."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
import torch
import yaml
from PIL import Image

from services.common.errors import InvalidArgument
from services.common.proto.sdstack.v1 import trainer_pb2
from services.trainer import fitting, state
from services.trainer.config import Preset, RequestedConfig, resolve_config
from services.trainer.datasets import repeats_of
from services.trainer.jobs import JobRecord
from services.trainer.plan import DatasetShape, bucket_resolutions, estimate, nearest_bucket
from services.trainer.runners import load_template_file, render_job
from services.trainer.tagger import Tagger, parse_tags_csv, tags_from_onnx
from services.trainer.tags import TagEdit, tag_frequency
from tests.trainer_support import build_tagger, striped_picture, tags_csv

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "trainer-job.yaml"


def config(**fields: object) -> RequestedConfig:
    base = {"dataset_id": "a" * 32, "base_model": "tiny", "output_name": "office", "seed": 1}
    return RequestedConfig(**{**base, **fields})


def square(n: int, repeats: int = 1) -> DatasetShape:
    return DatasetShape([repeats] * n, [(512, 512)] * n)


def test_total_steps_follow_the_seed_formula() -> None:
    # 30 images × 20 repeats × 10 epochs / batch 2 = 3000 steps, inside 1500–6000.
    planned = estimate(resolve_config(config(repeats=20, epochs=10, batch_size=2)), square(30))
    assert planned.total_steps == 3000
    assert (planned.images, planned.repeats, planned.epochs, planned.batch_size) == (30, 20, 10, 2)
    assert list(planned.warnings) == []


def test_folder_repeats_are_used_and_batches_round_up() -> None:
    # kohya folders: 3 images ×10 and 2 images ×5 = 40 samples; batch 3 → 14 batches/epoch.
    shape = DatasetShape([10, 10, 10, 5, 5], [(512, 512)] * 5)
    planned = estimate(resolve_config(config(epochs=2, batch_size=3)), shape)
    assert planned.total_steps == 28
    assert repeats_of(PurePosixPath("set/10_office/a.png"), 1) == 10
    assert repeats_of(PurePosixPath("loose.png"), 3) == 3


def test_max_train_steps_caps_the_total() -> None:
    planned = estimate(resolve_config(config(repeats=50, max_train_steps=700)), square(40))
    assert planned.total_steps == 700


def test_warnings_outside_the_recommended_range() -> None:
    low = estimate(resolve_config(config(repeats=1, epochs=1)), square(5))
    assert any("below the recommended 1500-6000" in w for w in low.warnings)
    assert any("only 5 images" in w for w in low.warnings)
    high = estimate(resolve_config(config(repeats=100, epochs=10, network_dim=256)), square(40))
    assert high.total_steps == 40_000
    assert any("above the recommended" in w for w in high.warnings)
    assert any("rank 256 is high" in w for w in high.warnings)


def test_presets_fill_repeats_and_warn_outside_their_range() -> None:
    anime = resolve_config(config(preset=Preset.ANIME))
    assert 10 <= anime.repeats <= 16 and anime.clip_skip == 2
    assert resolve_config(config(preset=Preset.REALISTIC)).repeats in range(17, 36)
    assert resolve_config(config(preset=Preset.SCENE)).repeats >= 50
    odd = estimate(resolve_config(config(preset=Preset.SCENE, repeats=5)), square(20))
    assert any("preset scene recommends repeats 50 or more" in w for w in odd.warnings)


def test_defaults_and_file_size_for_the_rank() -> None:
    resolved = resolve_config(config())
    assert resolved.network_dim == 32 and resolved.network_alpha == 16
    assert resolved.unet_lr == pytest.approx(1e-4) and resolved.text_encoder_lr == pytest.approx(
        5e-5
    )
    assert resolved.lr_scheduler == "cosine" and resolved.cache_latents
    # The seed's rule of thumb: rank 128 with the text encoder is about a 140 MB file.
    big = estimate(resolve_config(config(network_dim=128, train_text_encoder=True)), square(20))
    assert 130e6 < big.estimated_file_bytes < 150e6
    assert not big.resolved.cache_text_embeddings  # cannot cache what is being trained


def test_bad_fields_are_named_with_their_rule() -> None:
    with pytest.raises(InvalidArgument) as caught:
        resolve_config(
            config(
                dataset_id="x",
                resolution=500,
                network_dim=8,
                network_alpha=9,
                lr_scheduler="sometimes",
                learning_rate=float("nan"),
            )
        )
    fields = {v.field for v in caught.value.violations}
    assert {
        "config.dataset_id",
        "config.resolution",
        "config.network_alpha",
        "config.lr_scheduler",
        "config.learning_rate",
    } <= fields


def test_tag_edits_and_frequency() -> None:
    edit = TagEdit(
        add=["interior"], remove=["blurry"], replace={"sofa": "couch"}, trigger_word="acme style"
    )
    assert edit.apply("sofa, blurry, lamp") == "acme style, couch, lamp, interior"
    assert edit.apply("lamp, acme style") == "acme style, lamp, interior"
    assert tag_frequency(["a, b", "b, c", "b"]) == [("b", 3), ("a", 1), ("c", 1)]


def test_buckets_keep_the_area_and_pick_the_nearest_aspect() -> None:
    buckets = bucket_resolutions(512)
    assert all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in buckets)
    assert (512, 512) in buckets and (768, 320) in buckets
    assert nearest_bucket((1600, 900), buckets) == (640, 384)
    fitted = fitting.fit_bucket(Image.new("RGB", (1600, 900)), buckets)
    assert fitted.size == (640, 384)


def test_subject_crop_follows_the_detail() -> None:
    picture = Image.new("RGB", (300, 100), "white")
    picture.paste(striped_picture(0, side=60), (230, 20))  # detail at the right end
    centre = fitting.fit_center(picture, (64, 64))
    subject = fitting.fit_subject(picture, (64, 64))
    assert centre.size == subject.size == (64, 64)
    assert centre.getextrema() == ((255, 255), (255, 255), (255, 255))  # plain middle
    assert subject.getextrema()[1][0] < 100  # the striped subject is in the crop


def test_saved_state_is_atomic_and_a_damaged_save_is_skipped(tmp_path: Path) -> None:
    state.save_state(tmp_path, 10, {"weights": torch.ones(3)})
    state.save_state(tmp_path, 20, {"weights": torch.full((3,), 2.0)})
    # A crash in the middle of the next write leaves only its temporary file...
    (tmp_path / ".state-000000030.pt.tmp").write_bytes(b"half written")
    assert state.load_latest(tmp_path)["step"] == 20
    # ...and a newest file cut short on disk falls back to the save before it.
    newest = state.state_path(tmp_path, 20)
    newest.write_bytes(newest.read_bytes()[:100])
    loaded = state.load_latest(tmp_path)
    assert loaded["step"] == 10 and torch.equal(loaded["weights"], torch.ones(3))
    state.save_state(tmp_path, 40, {"weights": torch.zeros(3)})
    assert state.saved_steps(tmp_path) == [40, 20]  # the two newest are kept


def test_the_kubernetes_job_is_rendered_from_the_deploy_template() -> None:
    job = JobRecord(
        id="f" * 32,
        owner="ada",
        request_id="r1",
        state=trainer_pb2.TRAINING_STATE_PREPARING,
        estimate=estimate(resolve_config(config()), square(1)),
        attempts=2,
    )
    manifest = render_job(load_template_file(TEMPLATE), job, "sdstack")
    assert manifest["kind"] == "Job" and manifest["metadata"]["namespace"] == "sdstack"
    assert manifest["metadata"]["name"] == f"sdstack-train-{'f' * 32}-2"
    assert len(manifest["metadata"]["name"]) <= 63
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "services.trainer.job"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SDSTACK_TRAINING_JOB_ID"] == "f" * 32
    assert sum(1 for e in container["env"] if e["name"] == "SDSTACK_TRAINING_JOB_ID") == 1
    labels = manifest["spec"]["template"]["metadata"]["labels"]
    assert labels["sdstack.io/training-job"] == "f" * 32
    assert yaml.safe_load(yaml.safe_dump(manifest)) == manifest  # plain data, ready to POST


def test_wd14_style_tagger_reads_bgr_and_applies_thresholds(tmp_path: Path) -> None:
    tagger = Tagger(build_tagger(tmp_path / "t.onnx"), parse_tags_csv(tags_csv()))
    red = Image.new("RGB", (300, 200), (250, 10, 10))
    blue = Image.new("RGB", (200, 300), (10, 10, 250))
    assert tagger.tag(red) == ["red theme"]
    assert tagger.tag(blue) == ["blue theme"]
    everything = tagger.tag(red, threshold=0.0001)
    assert everything[0] == "red theme"  # best first; ratings and the character tag never
    assert set(everything) == {"red theme", "green theme", "blue theme", "^_^"}
    embedded = build_tagger(tmp_path / "e.onnx", embed_tags=True)
    assert [t.name for t in tags_from_onnx(embedded) or []][:3] == [
        "general",
        "sensitive",
        "red_theme",
    ]
