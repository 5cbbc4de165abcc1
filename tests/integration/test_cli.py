"""The `sdstack` command line against the running stack, as a user types it."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from services.common.clients import GeneratorClient
from services.common.config import settings_env
from services.common.errors import RemoteError
from services.common.proto.sdstack.v1 import common_pb2
from tests.stack_fixtures import RunningStack

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]


def sdstack(stack: RunningStack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sdstack.cli", *args],
        env={**os.environ, **settings_env(stack.settings)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_list_and_generate(
    running_stack: RunningStack,
    tiny_model_files,
    tmp_path: Path,
) -> None:
    imported = sdstack(
        running_stack, "models", "import", str(tiny_model_files.single_file), "--name", "my-tiny"
    )
    assert imported.returncode == 0, imported.stderr
    assert "imported my-tiny.safetensors [" in imported.stdout

    listed = sdstack(running_stack, "models", "list")
    assert listed.returncode == 0, listed.stderr
    assert "my-tiny.safetensors" in listed.stdout
    assert "sdstack-tiny-demo.safetensors" in listed.stdout

    out = tmp_path / "pngs"
    made = sdstack(
        running_stack,
        *("generate", "a pavilion by a lake", "--model", "my-tiny", "--seed", "5"),
        *("--batch", "2", "--steps", "2", "--width", "64", "--height", "64", "--out", str(out)),
    )
    assert made.returncode == 0, made.stderr
    files = sorted(out.glob("*.png"))
    assert [f.name.rsplit("-", 1)[1] for f in files] == ["5.png", "6.png"]
    image = Image.open(files[0])
    assert image.size == (64, 64)
    assert "Model: my-tiny" in image.info["parameters"]


def test_import_of_a_missing_file_is_one_clear_line(running_stack: RunningStack) -> None:
    result = sdstack(running_stack, "models", "import", "/nonexistent/model.safetensors")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "sdstack: PATH: /nonexistent/model.safetensors is not a file or a diffusers folder"
    )


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_checkpoint_is_refused(
    running_stack: RunningStack,
    tmp_path: Path,
) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    with (
        GeneratorClient(running_stack.settings.target("generator")) as client,
        pytest.raises(RemoteError) as raised,
    ):
        client.import_model(
            evil, name="evil", kind=common_pb2.MODEL_KIND_CHECKPOINT, file_format="ckpt"
        )
    assert raised.value.reason == "INVALID_ARGUMENT"
    assert not marker.exists()
    with GeneratorClient(running_stack.settings.target("generator")) as client:
        names = [m.name for m in client.list_models().models]
    assert "evil" not in names
