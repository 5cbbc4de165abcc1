"""A throwaway PostgreSQL server from the system packages, and a fresh database per test.

`postgres_server` runs `initdb` and `postgres` on a free loopback port in a temporary
folder, once per session (as the `postgres` user when the tests run as root: PostgreSQL
refuses to run as root). `database_url` is parametrised over SQLite and PostgreSQL, so a
test that takes it runs against both backends. When PostgreSQL is not installed the tests
fail, naming the fix (`make install-dev` installs it): they are never skipped silently.

Registered for the whole suite by `tests/conftest.py`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from sdstack.launcher import free_ports

SUPERUSER = "sdstack"
START_TIMEOUT_S = 30.0
RUN_AS = "postgres"


def postgres_bin_dir() -> Path | None:
    """Folder of `initdb` and `postgres`: the newest /usr/lib/postgresql/*/bin, else PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


@dataclass(frozen=True)
class PostgresServer:
    port: int
    host: str = "127.0.0.1"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            host=self.host, port=self.port, user=SUPERUSER, dbname=database, autocommit=True
        )


def _as_owner(command: list[str]) -> list[str]:
    """The command run as the `postgres` user when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", RUN_AS, "--", *command]
    return ["su", RUN_AS, "-s", "/bin/sh", "-c", " ".join(command)]


def _wait_until_ready(server: PostgresServer, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"postgres exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            server.connect().close()
            return
        except psycopg.OperationalError:
            time.sleep(0.1)
    raise RuntimeError(f"postgres did not start in {START_TIMEOUT_S} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.fail(
            "PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on "
            "PATH): run `make install-dev`, which installs the `postgresql` package",
            pytrace=False,
        )
    # Not under pytest's tmp dir: that one is private to root, and postgres runs as itself.
    root = Path(tempfile.mkdtemp(prefix="sdstack-pg-"))
    data, sockets, log = root / "data", root / "sockets", root / "postgres.log"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, RUN_AS)
        shutil.chown(sockets, RUN_AS)
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER]
    initdb += ["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]
    subprocess.run(_as_owner(initdb), check=True, capture_output=True)
    server = PostgresServer(port=free_ports(1)[0])
    options = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    command = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(server.port)]
    command += ["-h", server.host, "-k", str(sockets), *options]
    with open(log, "wb") as log_file:
        process = subprocess.Popen(_as_owner(command), stdout=log_file, stderr=log_file)
    try:
        _wait_until_ready(server, process, log)
        yield server
    finally:
        _stop(process, data)
        shutil.rmtree(root, ignore_errors=True)


def _stop(process: subprocess.Popen[bytes], data: Path) -> None:
    """Fast shutdown of the postmaster (by its pid file: `process` may be runuser)."""
    pid_file = data / "postmaster.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError, IndexError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)
    else:
        process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A new, empty database for one test, dropped after it."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    with postgres_server.connect() as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_server.url(name)
    finally:
        with postgres_server.connect() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend in turn: the test runs once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'gallery.db'}"
    return request.getfixturevalue("postgres_url")


class RestartablePostgres:
    """A PostgreSQL of its own that a test may stop and start again on the same port and
    data folder (the session's `postgres_server` is shared and must stay up).

    `start()` runs `initdb` the first time only; `stop()` is a fast shutdown (SIGINT to
    the postmaster), so clients see their connections closed and new ones refused.
    """

    def __init__(self) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            pytest.fail("PostgreSQL is not installed: run `make install-dev`", pytrace=False)
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="sdstack-pg-"))
        self.data, self.log = self.root / "data", self.root / "postgres.log"
        self.server = PostgresServer(port=free_ports(1)[0])
        self._process: subprocess.Popen[bytes] | None = None

    def _init(self) -> None:
        sockets = self.root / "sockets"
        sockets.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, RUN_AS)
            shutil.chown(sockets, RUN_AS)
        initdb = [str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", SUPERUSER]
        initdb += ["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]
        subprocess.run(_as_owner(initdb), check=True, capture_output=True)

    def start(self) -> None:
        if not self.data.exists():
            self._init()
        options = ["-c", "fsync=off", "-c", "synchronous_commit=off"]
        command = [str(self.bin_dir / "postgres"), "-D", str(self.data)]
        command += ["-p", str(self.server.port), "-h", self.server.host]
        command += ["-k", str(self.root / "sockets"), *options]
        with open(self.log, "ab") as log_file:
            self._process = subprocess.Popen(_as_owner(command), stdout=log_file, stderr=log_file)
        _wait_until_ready(self.server, self._process, self.log)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        if self._process is not None:
            _stop(self._process, self.data)
            self._process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
