"""The service images (deploy/docker): read as the builder would, since no image is built here.

Each Dockerfile is parsed into instructions; the tests check what a build and a run would
rely on: pinned bases (CUDA runtime for the GPU services, slim Python for the others), the
project's torch pin, sources that exist, a non-root final user, a health check calling
the script the image ships, and an entrypoint module that exists.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass

import pytest

from services.common.config import Settings
from tests.deploy.manifests import DEPLOY, REPO

DOCKER = DEPLOY / "docker"
SERVICES = {
    "generator": "cuda",
    "trainer": "cuda",
    "gateway": "slim",
    "gallery": "slim",
}
DEFAULTS = Settings()
CUDA_BASE = re.compile(r"^nvidia/cuda:\d+\.\d+\.\d+-(cudnn-)?runtime-ubuntu\d+\.\d+$")
SLIM_BASE = re.compile(r"^python:3\.11\.\d+-slim-(bookworm|trixie)$")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    argument: str


def parse(text: str) -> list[Instruction]:
    """Dockerfile instructions, with line continuations joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, argument = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), argument.strip()))
    assert not pending, "dangling line continuation"
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    return instructions[starts[-1] :]


def torch_pin() -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    [pin] = [d for d in project["project"]["dependencies"] if d.startswith("torch==")]
    return pin


@pytest.fixture(params=sorted(SERVICES))
def service(request: pytest.FixtureRequest) -> str:
    return request.param


def test_every_service_has_a_dockerfile_and_no_other() -> None:
    assert {p.name.removesuffix(".Dockerfile") for p in DOCKER.glob("*.Dockerfile")} == set(
        SERVICES
    )


def test_bases_are_pinned_cuda_runtime_or_slim(service: str) -> None:
    instructions = parse((DOCKER / f"{service}.Dockerfile").read_text())
    bases = [ins.argument.split()[0] for ins in instructions if ins.keyword == "FROM"]
    assert len(bases) == 2, "a build stage and a runtime stage"
    pattern = CUDA_BASE if SERVICES[service] == "cuda" else SLIM_BASE
    for base in bases:
        assert pattern.match(base), base
    assert bases[0] == bases[1], "the venv is built on the base it runs on"


def test_torch_is_the_project_pin_and_sources_exist(service: str) -> None:
    instructions = parse((DOCKER / f"{service}.Dockerfile").read_text())
    runs = " ".join(ins.argument for ins in instructions if ins.keyword == "RUN")
    assert f"pip install {torch_pin()}" in runs or f"{torch_pin()}" in runs
    if SERVICES[service] == "slim":
        assert "download.pytorch.org/whl/cpu" in runs  # CPU build: no CUDA in slim images
    for ins in instructions:
        if ins.keyword == "COPY" and not ins.argument.startswith("--from"):
            *sources, _destination = shlex.split(ins.argument)
            for source in sources:
                assert (REPO / source).exists(), source


def test_the_image_runs_as_a_non_root_user_with_a_health_check(service: str) -> None:
    stage = final_stage(parse((DOCKER / f"{service}.Dockerfile").read_text()))
    users = [ins.argument for ins in stage if ins.keyword == "USER"]
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 10000, users[-1]
    # the USER comes after the last RUN: nothing runs as root after it
    keywords = [ins.keyword for ins in stage]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")

    [healthcheck] = [ins.argument for ins in stage if ins.keyword == "HEALTHCHECK"]
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command == ["python", "/opt/sdstack/healthcheck.py", service]
    assert any(
        ins.keyword == "COPY" and ins.argument.endswith("/opt/sdstack/healthcheck.py")
        for ins in stage
    )

    [entrypoint] = [json.loads(ins.argument) for ins in stage if ins.keyword == "ENTRYPOINT"]
    assert entrypoint[:2] == ["python", "-m"]
    assert importlib.util.find_spec(entrypoint[2]) is not None, entrypoint

    [expose] = [ins.argument.split() for ins in stage if ins.keyword == "EXPOSE"]
    if service == "gateway":
        assert expose == [str(DEFAULTS.gateway_port)]
    else:
        assert expose == [
            str(getattr(DEFAULTS, f"{service}_port")),
            str(getattr(DEFAULTS, f"{service}_metrics_port")),
        ]
    env = " ".join(ins.argument for ins in stage if ins.keyword == "ENV")
    assert "SDSTACK_HOST=0.0.0.0" in env  # reachable from outside its container


def test_gpu_images_give_nvml_the_driver_utility_capability() -> None:
    for service, base in SERVICES.items():
        if base == "cuda":
            text = (DOCKER / f"{service}.Dockerfile").read_text()
            assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in text
            assert "SDSTACK_CLIP_TOKENIZER_DIR=/opt/sdstack/clip/tokenizer" in text


def test_the_health_check_script_refuses_unknown_services() -> None:
    result = subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py"), "nothing"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2 and "usage" in result.stderr
