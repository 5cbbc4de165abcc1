"""Start-up and shutdown as an operator sees them: one clear line for bad configuration,
nothing half-started, and `sdstack up` stopping cleanly on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdstack.launcher import free_ports
from services.common.clients import GeneratorClient
from services.common.config import settings_env
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2
from services.common.s3_server import LocalS3Server
from tests.s3_fixtures import ACCESS_KEY, SECRET_KEY
from tests.stack_fixtures import stack_settings

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]


def _run(argv: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *argv],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_bad_env_value_names_the_variable() -> None:
    result = _run(["gateway.server"], {"SDSTACK_GATEWAY_PORT": "seventy"})
    assert result.returncode == 2
    lines = _error_lines(result)
    assert len(lines) == 1, lines
    assert lines[0].startswith("gateway: cannot start: SDSTACK_GATEWAY_PORT: ")
    assert "integer" in lines[0]


def test_unreachable_object_store_names_the_setting(tmp_path: Path) -> None:
    (unused,) = free_ports(1)
    env = {
        "SDSTACK_DATA_DIR": str(tmp_path),
        "SDSTACK_S3_ENDPOINT": f"127.0.0.1:{unused}",
        "SDSTACK_GALLERY_PORT": str(free_ports(1)[0]),
        "SDSTACK_GALLERY_METRICS_PORT": str(free_ports(1)[0]),
    }
    started = time.monotonic()
    result = _run(["services.gallery.server"], env)
    assert time.monotonic() - started < 30
    assert result.returncode == 2
    lines = _error_lines(result)
    assert len(lines) == 1, lines
    assert lines[0].startswith("gallery: cannot start: SDSTACK_S3_ENDPOINT: object store at")


def test_missing_default_checkpoint_names_the_setting(
    tmp_path: Path, clip_tokenizer_dir: Path, local_s3: LocalS3Server
) -> None:
    settings = stack_settings(
        tmp_path,
        clip_tokenizer_dir,
        s3_endpoint=local_s3.endpoint,
        s3_access_key=ACCESS_KEY,
        s3_secret_key=SECRET_KEY,
        install_demo_model=False,
        default_checkpoint="no-such-model",
    )
    result = _run(["services.generator.server"], settings_env(settings))
    assert result.returncode == 2
    assert _error_lines(result)[-1] == (
        "generator: cannot start: SDSTACK_DEFAULT_CHECKPOINT: "
        "no checkpoint named 'no-such-model' in the store"
    )


def test_taken_port_names_the_setting(tmp_path: Path, clip_tokenizer_dir: Path) -> None:
    settings = stack_settings(tmp_path, clip_tokenizer_dir)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", settings.generator_port))
        holder.listen()
        result = _run(
            ["sdstack.cli", "up"], {**settings_env(settings), "SDSTACK_LOG_LEVEL": "ERROR"}
        )
    assert result.returncode == 2
    assert f"SDSTACK_GENERATOR_PORT: cannot listen on 127.0.0.1:{settings.generator_port}" in (
        result.stderr
    )
    assert _port_is_free(settings.s3_port), "the S3 server was started anyway"


def test_up_with_an_unreachable_store_stops_everything(
    tmp_path: Path,
    clip_tokenizer_dir: Path,
) -> None:
    (unused,) = free_ports(1)
    settings = stack_settings(
        tmp_path, clip_tokenizer_dir, s3_endpoint=f"127.0.0.1:{unused}", log_level="ERROR"
    )
    result = _run(["sdstack.cli", "up"], settings_env(settings), timeout=120)
    assert result.returncode == 2
    last = _error_lines(result)[-2]  # the last line is "sdstack stopped"
    assert last.startswith("sdstack up: ")
    assert f"SDSTACK_S3_ENDPOINT: object store at 127.0.0.1:{unused} is unreachable" in last
    assert _error_lines(result)[-1] == "sdstack stopped"
    for port in (settings.gateway_port, settings.generator_port, settings.gallery_port):
        assert _port_is_free(port)


def test_up_serves_then_stops_cleanly_on_ctrl_c_letting_work_finish(
    tmp_path: Path,
    clip_tokenizer_dir: Path,
) -> None:
    settings = stack_settings(tmp_path, clip_tokenizer_dir)
    process = subprocess.Popen(
        [sys.executable, "-m", "sdstack.cli", "up"],
        env={**os.environ, **settings_env(settings)},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    children: list[int] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 240
        line = ""
        while "sdstack is up" not in line and time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line or process.poll() is None, "sdstack up exited before it was up"
        assert f"http://127.0.0.1:{settings.gateway_port}" in line
        children = _descendants(process.pid)
        assert len(children) >= 5, "expected S3, three services and the gateway"
        with GeneratorClient(settings.target("generator")) as generator:
            events = generator.generate(_long_generation())
            next(e for e in events if e.HasField("progress"))
            os.killpg(process.pid, signal.SIGINT)
            rest = list(events)
        assert rest[-1].HasField("result"), "the running generation was not allowed to finish"
        assert len(rest[-1].result.images) == 1
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            _kill_groups(children)  # each service leads a process group of its own
    time.sleep(0.5)
    alive = [pid for pid in children if _alive(pid)]
    assert not alive, f"orphans left running: {alive}"
    ports = [
        settings.gateway_port,
        settings.generator_port,
        settings.trainer_port,
        settings.gallery_port,
        settings.s3_port,
        settings.generator_metrics_port,
    ]
    assert [p for p in ports if not _port_is_free(p)] == []


def _long_generation() -> generator_pb2.GenerateRequest:
    params = common_pb2.GenerationParams(prompt="x", seed=2, width=256, height=256, steps=60)
    return generator_pb2.GenerateRequest(params=params)


def _descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry.name))
                frontier.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _kill_groups(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
