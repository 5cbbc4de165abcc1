"""The trainer in the running stack, through the gateway: a designer's whole loop —
upload pictures, tag them, train (surviving a killed worker), then use the LoRA."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from safetensors import safe_open

from services.common.sql import create_engine_for
from services.generator.demo_model import DEMO_MODEL_NAME
from services.trainer.jobs import JobStore
from tests.stack_fixtures import RunningStack
from tests.trainer_support import build_tagger, dataset_zip, png_bytes, striped_picture

pytestmark = pytest.mark.integration

TOTAL_STEPS = 60  # 6 images × 2 repeats × 10 epochs / batch 2


def _upload(
    http: httpx.Client, name: str, files: list[tuple[str, bytes]], **form: str
) -> httpx.Response:
    parts = [("files", (path, data, "application/octet-stream")) for path, data in files]
    return http.post("/v1/datasets", files=parts, data={"name": name, **form})


def _events(http: httpx.Client, job_id: str) -> Iterator[tuple[str, dict]]:
    with http.stream("GET", f"/v1/trainings/{job_id}/events", timeout=300) as response:
        assert response.status_code == 200
        kind = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                yield kind, json.loads(line.removeprefix("data: "))


def _wait_final(http: httpx.Client, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/trainings/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_dataset_upload_tagging_and_clear_errors(
    running_stack: RunningStack, tmp_path: Path
) -> None:
    with running_stack.http() as http:
        created = _upload(http, "stripes", [("set.zip", dataset_zip())])
        assert created.status_code == 201, created.text
        dataset = created.json()
        assert [i["repeats"] for i in dataset["images"]] == [2] * 6
        assert dataset["tag_frequency"] == [
            {"tag": "red", "count": 6},
            {"tag": "sks stripes", "count": 6},
        ]
        url = f"/v1/datasets/{dataset['id']}"
        edit = http.put(
            f"{url}/captions", json={"path": "2_stripes/img0.png", "caption": "red, sofa"}
        )
        assert edit.json()["caption"] == "red, sofa"
        tags = http.post(
            f"{url}/tags",
            json={"remove": ["sks stripes"], "replace": {"sofa": "couch"}, "trigger_word": "acme"},
        ).json()
        assert tags["images"][0]["caption"] == "acme, red, couch"
        assert tags["images"][1]["caption"] == "acme, red"
        prepared = http.post(f"{url}/prepare", json={"resolution": 128, "crop": "subject"}).json()
        assert prepared["prepared_resolution"] == 128
        assert {(i["width"], i["height"]) for i in prepared["images"]} == {(128, 128)}

        # A WD14-shaped tagger uploaded like any model (its tag list inside the ONNX file).
        tagger = build_tagger(tmp_path / "wd-tiny.onnx", embed_tags=True).read_bytes()
        stored = http.post(
            "/v1/models",
            params={"name": "wd-tiny", "kind": "tagger", "format": "onnx"},
            content=tagger,
        )
        assert stored.status_code == 201, stored.text
        tagged = http.post(f"{url}/auto-tag", json={"tagger": "wd-tiny"}).json()
        assert all(i["caption"].endswith("red theme") for i in tagged["images"])
        thumbs = http.get(url, params={"thumbnails": True}).json()
        assert thumbs["images"][0]["thumbnail"].startswith("data:image/webp;base64,")

        bad = _upload(http, "bad", [("../../evil.png", png_bytes(striped_picture(0)))])
        assert bad.status_code == 400
        assert "plain relative path" in bad.json()["error"]["message"]
        corrupt = _upload(http, "bad", [("a.png", b"\x89PNG\r\n\x1a\ngarbage")])
        assert corrupt.status_code == 400 and "a.png" in corrupt.json()["error"]["message"]
        assert http.get(f"/v1/datasets/{'0' * 32}").status_code == 404


def test_training_survives_a_killed_worker_and_the_lora_is_usable(
    running_stack: RunningStack, tmp_path: Path
) -> None:
    jobs = JobStore(create_engine_for(running_stack.settings.resolved_database_url))
    with running_stack.http() as http:
        dataset = _upload(http, "train", [("set.zip", dataset_zip())]).json()
        body = {
            "dataset_id": dataset["id"],
            "base_model": DEMO_MODEL_NAME,
            "output_name": "stripes-style",
            "network_dim": 8,
            "network_alpha": 8,
            "learning_rate": 1e-2,
            "lr_scheduler": "constant",
            "epochs": 10,
            "batch_size": 2,
            "resolution": 64,
            "seed": 3,
            "sample_every_n_steps": 10,
            "sample_prompts": ["sks stripes, red"],
            "save_every_n_epochs": 5,
        }
        estimate = http.post("/v1/trainings/estimate", json=body).json()
        assert estimate["total_steps"] == TOTAL_STEPS
        assert any("below the recommended 1500-6000" in w for w in estimate["warnings"])
        started = http.post("/v1/trainings", json=body)
        assert started.status_code == 201, started.text
        job_id = started.json()["id"]

        queued = http.post("/v1/trainings", json={**body, "output_name": "never"}).json()
        cancelled = http.post(f"/v1/trainings/{queued['id']}/cancel").json()
        assert cancelled["state"] == "cancelled"

        seen: dict[str, int] = {"progress": 0, "sample": 0}
        for kind, data in _events(http, job_id):
            seen[kind] = seen.get(kind, 0) + 1
            if kind == "progress" and data["step"] >= 16 and seen["sample"]:
                assert data["total_steps"] == TOTAL_STEPS and data["loss"] > 0
                break
        worker = jobs.find(job_id).worker
        assert worker.startswith("pid:")
        os.kill(int(worker.removeprefix("pid:")), signal.SIGKILL)

        job = _wait_final(http, job_id)
        assert job["state"] == "succeeded", job["error"]
        assert job["step"] == TOTAL_STEPS and job["attempts"] == 2
        assert 0 < job["resumed_from_step"] < TOTAL_STEPS and job["resumed_from_step"] % 6 == 0
        assert job["sample_keys"] and job["lora_name"] == "stripes-style"
        final_events = list(_events(http, job_id))
        assert [k for k, _ in final_events] == ["job"]
        succeeded = ("sdstack_training_jobs_total", (("outcome", "succeeded"),))
        metrics = _trainer_metrics(running_stack)
        for _ in range(50):  # the queue's next pass (every 0.5 s) counts the ended job
            if metrics.get(succeeded, 0) >= 1:
                break
            time.sleep(0.2)
            metrics = _trainer_metrics(running_stack)
        assert metrics.get(succeeded, 0) >= 1
        # the steps redone after the resume are counted again
        steps = metrics[("sdstack_training_steps_total", (("job_id", job_id),))]
        assert TOTAL_STEPS <= steps <= 2 * TOTAL_STEPS

        loras = {m["name"]: m for m in http.get("/v1/loras").json()}
        assert {"stripes-style", "stripes-style-000005"} <= set(loras)
        # The generator stored the file as written, `ss_*` header included.
        stored = tmp_path / "stripes-style.safetensors"
        running_stack.object_store().download("loras", loras["stripes-style"]["object_key"], stored)
        with safe_open(str(stored), "pt") as lora:
            metadata = lora.metadata()
            assert any(key.startswith("lora_unet_") for key in lora.keys())  # noqa: SIM118
        assert metadata["ss_steps"] == str(TOTAL_STEPS) and metadata["ss_network_dim"] == "8"
        assert json.loads(metadata["ss_tag_frequency"]) == {
            "2_stripes": {"red": 6, "sks stripes": 6}
        }

        def image(prompt: str) -> bytes:
            request = {"prompt": prompt, "seed": 1, "width": 64, "height": 64, "steps": 6}
            made = http.post("/v1/generations", json=request)
            assert made.status_code == 200, made.text
            return http.get(made.json()["images"][0]["url"]).content

        assert image("sks stripes, red <lora:stripes-style:1>") != image("sks stripes, red")


def _trainer_metrics(stack: RunningStack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    s = stack.settings
    with urllib.request.urlopen(f"http://{s.host}:{s.trainer_metrics_port}/metrics") as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
