"""ObjectStore and LocalS3Server against a real SeaweedFS server on loopback."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from io import BytesIO
from pathlib import Path

import pytest

from services.common.errors import ConfigError, InvalidArgument, NotFound, Unavailable
from services.common.object_store import (
    ALL_BUCKETS,
    DATASETS_BUCKET,
    LORAS_BUCKET,
    MODELS_BUCKET,
    OUTPUTS_BUCKET,
    ChecksumMismatch,
    ObjectStore,
)
from services.common.s3_server import LocalS3Server, port_is_free
from tests.s3_fixtures import ACCESS_KEY, SECRET_KEY, free_port

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


class UnsizedStream:
    """A non-seekable stream of `size` deterministic pseudo-random bytes, read in odd sizes."""

    def __init__(self, size: int) -> None:
        self.remaining = size
        self.counter = 0

    def read(self, size: int = -1) -> bytes:
        if self.remaining <= 0:
            return b""
        size = self.remaining if size < 0 else min(size, self.remaining, 777_777)
        out = bytearray()
        while len(out) < size:
            out += hashlib.sha512(self.counter.to_bytes(8, "little")).digest()
            self.counter += 1
        self.remaining -= size
        return bytes(out[:size])


def unsized_bytes(size: int) -> bytes:
    stream, parts = UnsizedStream(size), []
    while chunk := stream.read(MiB):
        parts.append(chunk)
    return b"".join(parts)


@pytest.fixture(scope="module")
def store(object_store: ObjectStore) -> ObjectStore:
    object_store.ensure_buckets(ALL_BUCKETS)
    return object_store


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(ip, port) of every TCP socket the process listens on, read from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.split(":")
                found.add((_proc_ip(address), int(port, 16)))
    return found


def _proc_ip(hex_address: str) -> str:
    if len(hex_address) == 8:
        return socket.inet_ntop(socket.AF_INET, bytes.fromhex(hex_address)[::-1])
    return hex_address


def test_bucket_constants() -> None:
    assert set(ALL_BUCKETS) == {MODELS_BUCKET, LORAS_BUCKET, DATASETS_BUCKET, OUTPUTS_BUCKET}
    assert ALL_BUCKETS == ("models", "loras", "datasets", "outputs")


def test_ensure_buckets_is_idempotent(object_store: ObjectStore) -> None:
    object_store.ensure_buckets(ALL_BUCKETS)
    object_store.ensure_buckets(ALL_BUCKETS)
    object_store.ping()
    for bucket in ALL_BUCKETS:
        object_store.ping(bucket)
        assert object_store.put(bucket, "probe.txt", b"x").size == 1
        object_store.delete(bucket, "probe.txt")


def test_put_and_get_bytes_record_sha256(store: ObjectStore) -> None:
    data = b"\x89PNG fake image bytes" * 1000
    sha = hashlib.sha256(data).hexdigest()
    meta = {"Owner": "u1"}
    written = store.put(OUTPUTS_BUCKET, "u1/a.png", data, content_type="image/png", metadata=meta)
    assert (written.sha256, written.size, written.etag != "") == (sha, len(data), True)

    info = store.stat(OUTPUTS_BUCKET, "u1/a.png")
    assert (info.sha256, info.size, info.content_type) == (sha, len(data), "image/png")
    assert info.metadata == {"owner": "u1", "sha256": sha}
    assert info.last_modified is not None
    assert store.get_bytes(OUTPUTS_BUCKET, "u1/a.png") == data
    assert b"".join(store.get(OUTPUTS_BUCKET, "u1/a.png")) == data
    assert store.exists(OUTPUTS_BUCKET, "u1/a.png")


def test_ranges_read_part_of_an_object(store: ObjectStore) -> None:
    store.put(MODELS_BUCKET, "vae/ranged.bin", bytes(range(256)))
    assert store.get_range(MODELS_BUCKET, "vae/ranged.bin", 0, 8) == bytes(range(8))
    assert store.get_range(MODELS_BUCKET, "vae/ranged.bin", 250, 100) == bytes(range(250, 256))
    with pytest.raises(InvalidArgument, match="length"):
        store.get_range(MODELS_BUCKET, "vae/ranged.bin", 0, 0)
    with pytest.raises(NotFound):
        store.get_range(MODELS_BUCKET, "vae/missing.bin", 0, 8)


def test_stream_of_unknown_length_round_trips(store: ObjectStore) -> None:
    size = 25 * MiB + 12345
    expected = hashlib.sha256(unsized_bytes(size)).hexdigest()

    written = store.put(MODELS_BUCKET, "checkpoints/big.safetensors", UnsizedStream(size))  # type: ignore[arg-type]

    assert (written.size, written.sha256) == (size, expected)
    info = store.stat(MODELS_BUCKET, "checkpoints/big.safetensors")
    assert (info.size, info.sha256) == (size, expected)
    digest = hashlib.sha256()
    for chunk in store.get(MODELS_BUCKET, "checkpoints/big.safetensors"):
        digest.update(chunk)
    assert digest.hexdigest() == expected


def test_stream_of_given_length_and_local_file(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    written = store.put(DATASETS_BUCKET, "d/x.bin", BytesIO(data + b"extra"), length=len(data))
    assert written.sha256 == hashlib.sha256(data).hexdigest()
    assert store.get_bytes(DATASETS_BUCKET, "d/x.bin") == data

    with pytest.raises(InvalidArgument, match="data"):
        store.put(DATASETS_BUCKET, "d/short.bin", BytesIO(b"abc"), length=10)

    path = tmp_path / "lora.safetensors"
    path.write_bytes(data)
    info = store.put_file(LORAS_BUCKET, "style.safetensors", path)
    assert store.stat(LORAS_BUCKET, "style.safetensors").sha256 == info.sha256


def test_download_verifies_and_is_atomic(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(2 * MiB + 3)
    store.put(MODELS_BUCKET, "dl/good.bin", data)
    dest = tmp_path / "cache" / "good.bin"

    info = store.download(MODELS_BUCKET, "dl/good.bin", dest)

    assert dest.read_bytes() == data
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["good.bin"]


def test_download_with_wrong_sha256_leaves_nothing(store: ObjectStore, tmp_path: Path) -> None:
    # Written behind ObjectStore's back, with a lying sha256, as a corrupted store would be.
    store._client.put_object(
        MODELS_BUCKET, "dl/bad.bin", BytesIO(b"tampered"), 8, metadata={"sha256": "0" * 64}
    )
    dest = tmp_path / "bad.bin"
    dest.write_bytes(b"previous version")

    with pytest.raises(ChecksumMismatch, match="does not match"):
        store.download(MODELS_BUCKET, "dl/bad.bin", dest)

    assert dest.read_bytes() == b"previous version"
    assert [p.name for p in tmp_path.iterdir()] == ["bad.bin"]


def test_list_with_prefix(store: ObjectStore) -> None:
    for key in ("ls/a/1.txt", "ls/a/2.txt", "ls/a/sub/3.txt", "ls/b/1.txt"):
        store.put(DATASETS_BUCKET, key, key.encode())

    found = {info.key: info for info in store.list(DATASETS_BUCKET, prefix="ls/a/")}
    assert sorted(found) == ["ls/a/1.txt", "ls/a/2.txt", "ls/a/sub/3.txt"]
    assert found["ls/a/1.txt"].size == len("ls/a/1.txt")
    assert found["ls/a/1.txt"].bucket == DATASETS_BUCKET

    shallow = [info.key for info in store.list(DATASETS_BUCKET, "ls/a/", recursive=False)]
    assert sorted(shallow) == ["ls/a/1.txt", "ls/a/2.txt", "ls/a/sub/"]
    assert list(store.list(DATASETS_BUCKET, prefix="ls/none/")) == []


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.put(OUTPUTS_BUCKET, "del/x.png", b"x")
    store.delete(OUTPUTS_BUCKET, "del/x.png")
    store.delete(OUTPUTS_BUCKET, "del/x.png")
    store.delete("no-such-bucket", "del/x.png")
    assert not store.exists(OUTPUTS_BUCKET, "del/x.png")


def test_presigned_url_works_then_expires(store: ObjectStore) -> None:
    store.put(OUTPUTS_BUCKET, "share/p.png", b"shared bytes", content_type="image/png")
    url = store.presigned_get_url(OUTPUTS_BUCKET, "share/p.png")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"shared bytes"

    short = store.presigned_get_url(OUTPUTS_BUCKET, "share/p.png", expires=timedelta(seconds=1))
    time.sleep(2)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(short, timeout=10)
    assert refused.value.code == 403


def test_missing_object_is_not_found(store: ObjectStore, tmp_path: Path) -> None:
    for call in (store.stat, store.get, store.get_bytes):
        with pytest.raises(NotFound) as missing:
            call(MODELS_BUCKET, "nope/missing.bin")
        assert (missing.value.kind, missing.value.name) == ("object", "models/nope/missing.bin")
    with pytest.raises(NotFound):
        store.download(MODELS_BUCKET, "nope/missing.bin", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert not store.exists(MODELS_BUCKET, "nope/missing.bin")


@pytest.mark.parametrize(
    "key",
    ["../x", "a/../b", "", "/abs", "a//b", "./a", "dir/", "a\x00b", "a\nb", "a\\b", "k" * 1025],
)
def test_bad_keys_are_refused_before_any_network_call(key: str) -> None:
    unreachable = ObjectStore(f"127.0.0.1:{free_port()}", "a", "b")
    for call in (unreachable.stat, unreachable.get, unreachable.delete, unreachable.exists):
        with pytest.raises(InvalidArgument) as refused:
            call(MODELS_BUCKET, key)
        assert refused.value.violations[0].field == "key"
    with pytest.raises(InvalidArgument):
        unreachable.put(MODELS_BUCKET, key, b"x")


def test_wrong_credentials_get_an_error_not_data(
    store: ObjectStore,
    local_s3: LocalS3Server,
) -> None:
    store.put(OUTPUTS_BUCKET, "secret/s.png", b"private")
    intruder = ObjectStore(local_s3.endpoint, ACCESS_KEY, "not-the-secret")
    with pytest.raises(Unavailable, match="credentials"):
        intruder.get_bytes(OUTPUTS_BUCKET, "secret/s.png")
    with pytest.raises(Unavailable):
        intruder.ping()
    anonymous = f"http://{local_s3.endpoint}/{OUTPUTS_BUCKET}/secret/s.png"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(anonymous, timeout=10)
    assert refused.value.code == 403


def test_unreachable_endpoint_is_unavailable_quickly() -> None:
    port = free_port()
    store = ObjectStore(f"http://127.0.0.1:{port}", "a", "b")
    started = time.monotonic()
    with pytest.raises(Unavailable, match=f"127.0.0.1:{port}.*unreachable"):
        store.ping()
    with pytest.raises(Unavailable):
        store.put(MODELS_BUCKET, "x", b"x")
    assert time.monotonic() - started < 10


def test_endpoint_forms() -> None:
    assert ObjectStore("http://h:1/", "a", "b").endpoint == "h:1"
    secure = ObjectStore("https://h:2", "a", "b")
    assert (secure.endpoint, secure.secure) == ("h:2", True)
    with pytest.raises(ConfigError):
        ObjectStore("http://h:1/path", "a", "b")


def test_port_taken_is_a_config_error(local_s3: LocalS3Server, tmp_path: Path) -> None:
    second = LocalS3Server(tmp_path, port=local_s3.port, access_key="a", secret_key="b" * 8)
    started = time.monotonic()
    with pytest.raises(ConfigError) as taken:
        second.start()
    assert taken.value.setting == "SDSTACK_S3_PORT"
    assert f"port {local_s3.port} on 127.0.0.1 is already in use" in str(taken.value)
    assert time.monotonic() - started < 2
    assert not second.running


def test_listens_on_loopback_only_and_stop_leaves_nothing(tmp_path: Path) -> None:
    server = LocalS3Server(tmp_path, port=free_port(), access_key="k" * 5, secret_key="s" * 10)
    server.start()
    pid, ports = server.pid, server.ports
    assert pid is not None and ports is not None
    try:
        expected = {server.port, *ports.all()}
        deadline = time.monotonic() + 5  # the admin server opens last, after S3 is ready
        while {port for _, port in listening_addresses(pid)} != expected:
            assert time.monotonic() < deadline, (listening_addresses(pid), expected)
            time.sleep(0.1)
        assert {ip for ip, _ in listening_addresses(pid)} == {"127.0.0.1"}
        assert (server.base_dir / "weed.log").stat().st_size > 0
    finally:
        server.stop()

    assert not Path(f"/proc/{pid}").exists()
    for port in (server.port, *ports.all()):
        assert port_is_free("127.0.0.1", port), port
    assert not [path for path in ports.grpc_sockets() if path.exists()]
    server.stop()  # idempotent


def test_command_line_runs_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    command = [
        *(sys.executable, "-m", "services.common.s3_server", "--data-dir", str(tmp_path)),
        *("--port", str(port), "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        store = ObjectStore(f"127.0.0.1:{port}", ACCESS_KEY, SECRET_KEY)
        deadline = time.monotonic() + 30
        while not (tmp_path / "seaweedfs" / "weed.pid").exists() or not _answers(store):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        weed_pid = int((tmp_path / "seaweedfs" / "weed.pid").read_text())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not Path(f"/proc/{weed_pid}").exists()
    assert port_is_free("127.0.0.1", port)


def _answers(store: ObjectStore) -> bool:
    try:
        store.ping()
    except Unavailable:
        return False
    return True


def test_a_server_orphaned_by_a_killed_launcher_is_reclaimed(tmp_path: Path) -> None:
    port = free_port()
    command = [
        *(sys.executable, "-m", "services.common.s3_server", "--data-dir", str(tmp_path)),
        *("--port", str(port), "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY),
    ]
    launcher = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = ObjectStore(f"127.0.0.1:{port}", ACCESS_KEY, SECRET_KEY)
    deadline = time.monotonic() + 30
    while not _answers(store):
        assert launcher.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    orphan = int((tmp_path / "seaweedfs" / "weed.pid").read_text())
    launcher.kill()  # SIGKILL: no chance to stop its weed
    launcher.wait()
    assert Path(f"/proc/{orphan}").exists()

    with LocalS3Server(tmp_path, port=port, access_key=ACCESS_KEY, secret_key=SECRET_KEY) as s3:
        assert not Path(f"/proc/{orphan}").exists()
        assert s3.running
    assert port_is_free("127.0.0.1", port)


def test_the_local_server_takes_a_bucket_per_collection_whatever_the_free_disk(
    tmp_path: Path,
) -> None:
    """SeaweedFS gives each bucket a volume of its own, and by default allows only as many
    volumes as the free disk holds of its volume size (1 GiB on a large disk): with 47 GB free
    the 48th bucket could not be written (HTTP 500, "no free volumes left"), which failed the
    suite once the session's server had seen enough test buckets. A hundred buckets with an
    object each must work on any disk."""
    server = LocalS3Server(
        tmp_path / "s3", port=free_port(), access_key=ACCESS_KEY, secret_key=SECRET_KEY
    )
    server.start()
    try:
        store = ObjectStore(server.endpoint, ACCESS_KEY, SECRET_KEY)
        names = [f"many-{i:03d}" for i in range(100)]
        store.ensure_buckets(names)
        for name in names:
            store.put(name, "object", b"x")
        assert store.get_bytes(names[-1], "object") == b"x"
        store.close()
    finally:
        server.stop()
