"""The gallery's readiness follows its dependencies.

The gallery can do nothing useful without its database (every call reads a record) or
its object store (every image is a file there), so its gRPC health is SERVING only while
both answer. A thread checks them every `CHECK_INTERVAL_S`: during an outage the health
check (and the gateway's `/readyz`) says not ready within about that long, and ready again
as soon as both answer; calls made meanwhile fail UNAVAILABLE naming the dependency. The
process itself stays up throughout: nothing needs restarting after the outage.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from services.common.errors import SdstackError
from services.common.grpc_server import GrpcServer

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0

Check = Callable[[], None]


class DependencyWatch:
    """Sets the server's health from `checks` (each raises when its dependency is gone)."""

    def __init__(
        self,
        server: GrpcServer,
        checks: Mapping[str, Check],
        interval: float = CHECK_INTERVAL_S,
    ) -> None:
        self.server = server
        self.checks = dict(checks)
        self.interval = interval
        self.failures: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dependency-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def check_once(self) -> bool:
        """Runs every check, updates the health and logs changes; True when all pass."""
        failures = {name: reason for name, check in self.checks.items() if (reason := _run(check))}
        if failures != self.failures:
            if failures:
                log.warning("not ready: %s", "; ".join(failures.values()))
            else:
                log.info("ready again: every dependency answers")
        self.failures = failures
        self.server.set_serving(not failures)
        return not failures

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check_once()


def _run(check: Check) -> str:
    """ "" when the check passes, else why it failed."""
    try:
        check()
    except SdstackError as error:
        return error.message
    except Exception as error:  # a check that breaks must not stop the watch
        return f"health check failed: {error}"
    return ""
