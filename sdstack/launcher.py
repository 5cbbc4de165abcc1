"""`sdstack up`: the whole stack on one machine, as separate processes.

Starts the bundled S3 server (unless SDSTACK_S3_ENDPOINT names one), the generator,
trainer and gallery, then the gateway; waits until each is healthy; prints the URL.
Ctrl-C or SIGTERM stops everything in reverse order. A process that dies during start-up
stops the rest, and its last line is shown.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.common.clients import GalleryClient, GeneratorClient, TrainerClient
from services.common.clients.channel import ServiceClient
from services.common.config import Settings, settings_env
from services.common.errors import ConfigError
from services.common.metrics import ensure_port_free
from services.common.s3_server import LocalS3Server

log = logging.getLogger("sdstack.up")

STARTUP_TIMEOUT_SECONDS = 300.0
PORT_SETTINGS = (
    "gateway_port",
    "generator_port",
    "trainer_port",
    "gallery_port",
    "generator_metrics_port",
    "trainer_metrics_port",
    "gallery_metrics_port",
    "s3_port",
)
"""Every port a local stack listens on (the S3 one only when it runs the bundled server)."""
STOP_MARGIN_SECONDS = 10.0
"""How long past the services' own shutdown grace a child may take before it is killed."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)

    def last_line(self) -> str:
        return self.lines[-1] if self.lines else "(no output)"


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.children: list[Child] = []
        self.s3: LocalS3Server | None = None
        self.stopping = threading.Event()

    def check_ports(self) -> None:
        s = self.settings
        for name in PORT_SETTINGS:
            if name != "s3_port" or not s.s3_endpoint:
                ensure_port_free(s.host, getattr(s, name), f"SDSTACK_{name.upper()}")

    def start(self) -> None:
        """Starts the local S3 server and the services, in order, and waits until they serve.
        If any fails to come up, whatever already started is stopped again."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.check_ports()
        # transformers warns at import about optional torchvision image processors
        # sdstack never uses; errors still show.
        env = {"TRANSFORMERS_VERBOSITY": "error", **os.environ, **settings_env(self.settings)}
        if not self.settings.s3_endpoint:
            self.s3 = LocalS3Server(
                self.settings.data_dir,
                port=self.settings.s3_port,
                access_key=self.settings.s3_access_key,
                secret_key=self.settings.s3_secret_key,
                host=self.settings.host,
            )
            log.info("starting the local S3 server on %s", self.s3.endpoint)
            self.s3.start()
            env["SDSTACK_S3_ENDPOINT"] = self.s3.endpoint
        for name, module in (
            ("generator", "services.generator.server"),
            ("trainer", "services.trainer.server"),
            ("gallery", "services.gallery.server"),
        ):
            self._spawn(name, module, env)
        self._wait_for_services()
        self._spawn("gateway", "gateway.server", env)
        self._wait_for_gateway()

    def _spawn(self, name: str, module: str, env: dict[str, str]) -> None:
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        child = Child(name, process)
        self.children.append(child)
        threading.Thread(target=self._relay, args=(child,), daemon=True).start()

    def _relay(self, child: Child) -> None:
        """Passes a child's log lines through, keeping the last ones for error reports."""
        assert child.process.stdout is not None
        for raw in child.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            child.lines = [*child.lines[-20:], line]
            sys.stderr.write(f"{child.name:>9} | {line}\n")

    def _check_alive(self) -> None:
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                time.sleep(0.2)  # let the relay thread catch the last line
                raise ConfigError(child.name, f"exited with {code}: {child.last_line()}")

    def _wait_until(self, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not ready():
            self._check_alive()
            if self.stopping.is_set():
                raise KeyboardInterrupt
            if time.monotonic() > deadline:
                raise ConfigError(what, f"not ready after {STARTUP_TIMEOUT_SECONDS:.0f}s")
            time.sleep(0.3)

    def _wait_for_services(self) -> None:
        clients: dict[str, ServiceClient] = {
            "generator": GeneratorClient(self.settings.target("generator")),
            "trainer": TrainerClient(self.settings.target("trainer")),
            "gallery": GalleryClient(self.settings.target("gallery")),
        }
        try:
            for name, client in clients.items():
                self._wait_until(name, client.is_serving)
        finally:
            for client in clients.values():
                client.close()

    def _wait_for_gateway(self) -> None:
        url = f"http://{self.settings.host}:{self.settings.gateway_port}/readyz"

        def answers() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        self._wait_until("gateway", answers)

    def stop(self) -> None:
        """Stops children in reverse order: SIGTERM, then SIGKILL once the services' own
        grace period (in which running work finishes) is over."""
        self.stopping.set()
        for child in reversed(self.children):
            if child.process.poll() is None:
                os.killpg(child.process.pid, signal.SIGTERM)
        grace = self.settings.shutdown_grace_seconds + STOP_MARGIN_SECONDS
        deadline = time.monotonic() + grace
        for child in reversed(self.children):
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", child.name)
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
        if self.s3 is not None:
            self.s3.stop()

    def wait(self) -> int:
        """Blocks until a signal or until a child dies; returns the exit status."""
        while not self.stopping.is_set():
            for child in self.children:
                if child.process.poll() is not None:
                    log.error("%s exited unexpectedly: %s", child.name, child.last_line())
                    return 1
            self.stopping.wait(0.5)
        return 0


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now (held open together so they are distinct)."""
    sockets = []
    for _ in range(count):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        sockets.append(probe)
    ports = [s.getsockname()[1] for s in sockets]
    for probe in sockets:
        probe.close()
    return ports


def free_port_settings() -> dict[str, int]:
    """A free port for every port setting, for a stack beside another (tests, benchmarks)."""
    return dict(zip(PORT_SETTINGS, free_ports(len(PORT_SETTINGS)), strict=True))


def run_stack(settings: Settings) -> int:
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    stack = Stack(settings)

    def _on_signal(_signum: int, _frame: object) -> None:
        stack.stopping.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        stack.start()
        url = f"http://{settings.host}:{settings.gateway_port}"
        sys.stdout.write(f"\nsdstack is up: {url}  (Ctrl-C stops it)\n\n")
        sys.stdout.flush()
        return stack.wait()
    except ConfigError as error:
        sys.stderr.write(f"sdstack up: {error}\n")
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()
        sys.stderr.write("sdstack stopped\n")
