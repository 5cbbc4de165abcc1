"""The whole stack as real processes on free ports, for integration tests.

`running_stack` starts what `sdstack up` starts (local S3, generator, trainer, gallery,
gateway) through the same launcher, in a temporary data directory, once per session.
Registered for the whole suite by `tests/conftest.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from sdstack.launcher import Stack, free_port_settings
from services.common.config import Settings, load_settings
from services.common.object_store import ObjectStore
from services.generator.demo_model import DEMO_MODEL_NAME


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
