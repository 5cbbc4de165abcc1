"""Structured logs carry the service and the request id of the work they describe."""

from __future__ import annotations

import json
import logging

import pytest

from services.common.logs import configure_logging
from services.common.request_context import reset_request_id, set_request_id


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_name_service_and_request(
    capsys: pytest.CaptureFixture[str],
    restore_root_logger: None,
) -> None:
    configure_logging("gallery", "INFO", "json")
    token = set_request_id("req-7")
    try:
        logging.getLogger("sdstack.test").info("stored %d images", 4)
    finally:
        reset_request_id(token)
    entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert entry["service"] == "gallery"
    assert entry["request_id"] == "req-7"
    assert entry["message"] == "stored 4 images"
    assert entry["level"] == "INFO"


def test_text_lines_show_the_request_id(
    capsys: pytest.CaptureFixture[str],
    restore_root_logger: None,
) -> None:
    configure_logging("generator", "INFO", "text")
    token = set_request_id("abc123")
    try:
        logging.getLogger("sdstack.test").warning("slow step")
    finally:
        reset_request_id(token)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "generator [abc123]" in line and line.endswith("slow step")
