"""The stack launcher (`make up`): a service that cannot start takes down what already did."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdstack.launcher import Stack
from services.common.errors import ConfigError
from tests.stack_fixtures import stack_settings

pytestmark = pytest.mark.integration


def test_a_service_that_cannot_start_stops_the_ones_already_started(
    tmp_path: Path, clip_tokenizer_dir: Path
) -> None:
    """The gallery refuses a database URL it cannot use; the local S3 server and the other
    services, started before it, must not be left running with nobody to stop them."""
    settings = stack_settings(tmp_path, clip_tokenizer_dir, database_url="nosuchdb://x")
    stack = Stack(settings)
    with pytest.raises(ConfigError) as failed:
        stack.start()
    assert failed.value.setting == "gallery"
    assert stack.s3 is not None and not stack.s3.running
    assert [child.name for child in stack.children] == ["generator", "trainer", "gallery"]
    assert all(child.process.poll() is not None for child in stack.children)
