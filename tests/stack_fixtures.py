"""The whole stack as real processes on free ports, for integration tests.

`running_stack` starts what `sdstack up` starts (local S3, generator, trainer, gallery,
gateway) through the same launcher, in a temporary data directory, once per session.
Registered for the whole suite by `tests/conftest.py`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import torch

from sdstack.launcher import Stack, free_port_settings
from services.common.clients import GeneratorClient, TrainerClient
from services.common.config import Settings, load_settings, settings_env
from services.common.object_store import ObjectStore
from services.common.sd.devices import pick_device, pick_dtype
from services.generator.demo_model import DEMO_MODEL_NAME

BFLOAT16_ROUNDING_LEVELS = 6
"""Pixel levels (of 255) one seed's image may move in bfloat16 when only the batch around it
changes: each rounding is 2⁻⁸ relative instead of float32's 2⁻²⁴ (3 to 4 measured on the
tiny model)."""


def stack_settings(data_dir: Path, tokenizer_dir: Path, **overrides: object) -> Settings:
    ports = free_port_settings()
    defaults = {"s3_endpoint": "", "database_url": "", "log_level": "WARNING"}
    return load_settings(
        data_dir=data_dir,
        clip_tokenizer_dir=tokenizer_dir,
        **{**defaults, **ports, **overrides},
    )


@dataclass
class RunningStack:
    settings: Settings

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.gateway_port}"

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=120)

    @property
    def generator_dtype(self) -> torch.dtype:
        """The precision the generator picked for its weights on this machine."""
        return pick_dtype(self.settings.precision, pick_device(self.settings.device))

    def rounding_levels(self, float32_levels: int) -> int:
        """How far (of 255 levels) a pixel may move when only the batch around an image
        changes (CPU kernels round differently for other batch sizes): `float32_levels` in
        float32, more in bfloat16, the generator's default on CPUs with AMX."""
        if self.generator_dtype == torch.float32:
            return float32_levels
        return max(float32_levels, BFLOAT16_ROUNDING_LEVELS)

    def object_store(self) -> ObjectStore:
        s = self.settings
        return ObjectStore(f"{s.host}:{s.s3_port}", s.s3_access_key, s.s3_secret_key)


@pytest.fixture(scope="session")
def running_stack(
    tmp_path_factory: pytest.TempPathFactory,
    clip_tokenizer_dir: Path,
) -> Iterator[RunningStack]:
    # Tests import more checkpoints into this shared stack; the default stays the demo.
    settings = stack_settings(
        tmp_path_factory.mktemp("stack"),
        clip_tokenizer_dir,
        default_checkpoint=DEMO_MODEL_NAME,
    )
    stack = Stack(settings)
    try:
        stack.start()
        yield RunningStack(settings)
    finally:
        stack.stop()


# -- extra processes beside the running stack (gateway tests) -----------------------------


@dataclass
class ExtraProcess:
    """A service or gateway process started beside the running stack, on its own ports."""

    name: str
    settings: Settings
    process: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.gateway_port}"

    @property
    def generator_target(self) -> str:
        return f"{self.settings.host}:{self.settings.generator_port}"

    @property
    def trainer_target(self) -> str:
        return f"{self.settings.host}:{self.settings.trainer_port}"

    def http(self, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=120, headers=headers)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _beside(stack: RunningStack, data_dir: Path, **overrides: object) -> Settings:
    """Settings for a process using the running stack's store and services."""
    s = stack.settings
    shared = {
        "s3_endpoint": f"{s.host}:{s.s3_port}",
        "s3_access_key": s.s3_access_key,
        "s3_secret_key": s.s3_secret_key,
        "database_url": s.resolved_database_url,
        "generator_target": s.target("generator"),
        "gallery_target": s.target("gallery"),
        "trainer_target": s.target("trainer"),
        "default_checkpoint": s.default_checkpoint,
        "install_demo_model": False,
    }
    tokenizer = s.resolved_clip_tokenizer_dir
    return stack_settings(data_dir, tokenizer, **{**shared, **overrides})


def _wait_ready(extra: ExtraProcess, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 180
    while not ready():
        if extra.process.poll() is not None:
            raise RuntimeError(f"{extra.name} exited during start-up")
        if time.monotonic() > deadline:
            extra.stop()
            raise RuntimeError(f"{extra.name} was not ready in time")
        time.sleep(0.3)


def start_generator(stack: RunningStack, data_dir: Path, **overrides: object) -> ExtraProcess:
    """Another generator replica over the running stack's object store."""
    settings = _beside(stack, data_dir, **overrides)
    extra = ExtraProcess("generator", settings, _spawn("services.generator.server", settings))
    with GeneratorClient(extra.generator_target) as client:
        _wait_ready(extra, client.is_serving)
    return extra


def start_gateway(stack: RunningStack, data_dir: Path, **overrides: object) -> ExtraProcess:
    """Another gateway over the running stack's services (or the replicas it is given)."""
    settings = _beside(stack, data_dir, **overrides)
    extra = ExtraProcess("gateway", settings, _spawn("gateway.server", settings))

    def answers() -> bool:
        try:
            return httpx.get(f"{extra.base_url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    _wait_ready(extra, answers)
    return extra


def start_trainer(
    stack: RunningStack, data_dir: Path, env: dict[str, str] | None = None, **overrides: object
) -> ExtraProcess:
    """Another trainer over the running stack's store and generator, with `env` added to
    its environment (its workers inherit it)."""
    settings = _beside(stack, data_dir, **overrides)
    extra = ExtraProcess(
        "trainer", settings, _spawn("services.trainer.server", settings, env), env or {}
    )
    _wait_trainer(extra)
    return extra


def restart(extra: ExtraProcess) -> ExtraProcess:
    """The same service started again on the same ports, data directory and environment
    (after it was stopped or killed)."""
    modules = {"generator": "services.generator.server", "trainer": "services.trainer.server"}
    again = ExtraProcess(
        extra.name,
        extra.settings,
        _spawn(modules[extra.name], extra.settings, extra.env),
        extra.env,
    )
    if extra.name == "generator":
        with GeneratorClient(again.generator_target) as client:
            _wait_ready(again, client.is_serving)
    else:
        _wait_trainer(again)
    return again


def _wait_trainer(extra: ExtraProcess) -> None:
    with TrainerClient(extra.trainer_target) as client:
        _wait_ready(extra, client.is_serving)


def _spawn(
    module: str, settings: Settings, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {
        "TRANSFORMERS_VERBOSITY": "error",
        **os.environ,
        **settings_env(settings),
        **(extra_env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", module],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def server_sent_events(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:
    """(event, data) pairs of a Server-Sent Events stream, as they arrive."""
    kind, data = "message", ""
    for line in lines:
        if line.startswith("event:"):
            kind = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data += line.removeprefix("data:").strip()
        elif not line and data:
            yield kind, json.loads(data)
            kind, data = "message", ""
