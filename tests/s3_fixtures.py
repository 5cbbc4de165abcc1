"""A real local S3 server (SeaweedFS) for integration tests, started once per session.

Registered for the whole suite by `tests/conftest.py`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sdstack.launcher import free_ports
from services.common.object_store import ObjectStore
from services.common.s3_server import LocalS3Server

ACCESS_KEY = "sdstack-test"
SECRET_KEY = "sdstack-test-secret"


def free_port() -> int:
    """A port nothing listens on right now."""
    return free_ports(1)[0]


@pytest.fixture(scope="session")
def local_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3Server]:
    server = LocalS3Server(
        tmp_path_factory.mktemp("s3"),
        port=free_port(),
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def object_store(local_s3: LocalS3Server) -> Iterator[ObjectStore]:
    store = ObjectStore(local_s3.endpoint, ACCESS_KEY, SECRET_KEY)
    try:
        yield store
    finally:
        store.close()
