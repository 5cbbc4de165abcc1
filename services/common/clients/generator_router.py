"""Several generator replicas behind one object.

A job goes to the next live replica in turn, which is remembered by request id, so that
watch and cancel reach the replica that runs it; a request id this process did not place
(another gateway's, or from before a restart) is looked for on every replica. A replica
that refuses the connection is skipped for a while and the job goes to the next one; one
that dies while it holds a job fails that job (it is never run twice). Listing calls go to
any live replica, the next one on UNAVAILABLE.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc

from services.common.clients.generator import GeneratorClient
from services.common.clients.replicas import ReplicaSet
from services.common.errors import NotFound, RemoteError, Unavailable
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2

T = TypeVar("T")
PLACEMENT_SECONDS = 900.0


class GeneratorRouter:
    def __init__(self, replicas: ReplicaSet[GeneratorClient]) -> None:
        self.replicas = replicas
        self._placed: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    @classmethod
    def connect(
        cls,
        addresses: list[str],
        *,
        timeout: float = 30.0,
        retry_after: float = 5.0,
        resolve_every: float = 30.0,
    ) -> GeneratorRouter:
        replicas = ReplicaSet(
            addresses,
            lambda target: GeneratorClient(target, timeout=timeout),
            retry_after=retry_after,
            resolve_every=resolve_every,
        )
        return cls(replicas)

    # -- jobs ---------------------------------------------------------------------------

    def generate(
        self, request: generator_pb2.GenerateRequest, *, timeout: float = 600.0
    ) -> Iterator[generator_pb2.GenerateEvent]:
        """The job's events from the replica that took it."""
        for client in self.replicas.ordered():
            started = False
            try:
                for event in client.generate(request, timeout=timeout):
                    if not started:
                        started = True
                        self._place(request.request_id, client)
                    yield event
                return
            except RemoteError as error:
                if started or not self._unreachable(client, error):
                    raise
        raise Unavailable("no generator replica answers")

    def watch(
        self, request_id: str, *, timeout: float = 600.0
    ) -> Iterator[generator_pb2.GenerateEvent]:
        for client in self._job_candidates(request_id):
            try:
                events = client.watch(request_id, timeout=timeout)
                first = next(events)
            except StopIteration:
                return
            except RemoteError as error:
                if error.status is grpc.StatusCode.NOT_FOUND:
                    continue
                if self._unreachable(client, error):
                    continue
                raise
            self._place(request_id, client)
            yield first
            yield from events
            return
        raise NotFound("generation", request_id)

    def cancel(self, request_id: str) -> bool:
        """Cancels the job where it runs (every replica is asked when that is unknown)."""
        for client in self._job_candidates(request_id):
            try:
                if client.cancel(request_id):
                    return True
            except RemoteError as error:
                if not self._unreachable(client, error):
                    raise
        return False

    def placed_on(self, request_id: str) -> str | None:
        """The replica address a job of this process went to, if known."""
        with self._lock:
            placed = self._placed.get(request_id)
        return placed[0] if placed else None

    def _place(self, request_id: str, client: GeneratorClient) -> None:
        now = time.monotonic()
        with self._lock:
            self._placed = {k: v for k, v in self._placed.items() if v[1] > now}
            self._placed[request_id] = (client.target, now + PLACEMENT_SECONDS)

    def _job_candidates(self, request_id: str) -> list[GeneratorClient]:
        clients = self.replicas.ordered()
        target = self.placed_on(request_id)
        placed = self.replicas.get(target) if target else None
        if placed is None:
            return clients
        return [placed, *(c for c in clients if c is not placed)]

    def _unreachable(self, client: GeneratorClient, error: RemoteError) -> bool:
        """True (and the replica skipped for a while) when it cannot be reached at all;
        an UNAVAILABLE the replica itself answered (its store is down) is its answer."""
        if error.status is not grpc.StatusCode.UNAVAILABLE or client.is_serving(timeout=1.0):
            return False
        self.replicas.mark_down(client)
        return True

    # -- everything else: any live replica --------------------------------------------

    def any(self, call: Callable[[GeneratorClient], T]) -> T:
        last: RemoteError | None = None
        for client in self.replicas.ordered():
            try:
                return call(client)
            except RemoteError as error:
                if not self._unreachable(client, error):
                    raise
                last = error
        raise Unavailable(f"no generator replica answers ({last.message if last else 'none'})")

    def list_models(
        self, kind: common_pb2.ModelKind = common_pb2.MODEL_KIND_UNSPECIFIED
    ) -> generator_pb2.ListModelsResponse:
        return self.any(lambda c: c.list_models(kind))

    def refresh_models(
        self, kind: common_pb2.ModelKind = common_pb2.MODEL_KIND_UNSPECIFIED
    ) -> generator_pb2.ListModelsResponse:
        return self.any(lambda c: c.refresh_models(kind))

    def list_samplers(self) -> list[common_pb2.SamplerInfo]:
        return self.any(lambda c: c.list_samplers())

    def list_upscalers(self) -> list[generator_pb2.UpscalerInfo]:
        return self.any(lambda c: c.list_upscalers())

    def list_styles(self) -> list[generator_pb2.Style]:
        return self.any(lambda c: c.list_styles())

    def get_style(self, name: str) -> generator_pb2.Style:
        return self.any(lambda c: c.get_style(name))

    def put_style(self, style: generator_pb2.Style) -> generator_pb2.Style:
        return self.any(lambda c: c.put_style(style))

    def delete_style(self, name: str) -> bool:
        return self.any(lambda c: c.delete_style(name))

    def import_model(self, path: Path, **header: object) -> common_pb2.ModelInfo:
        """Uploads to one live replica (they share the store); not retried elsewhere once
        the replica took the upload."""
        return self.any(lambda c: c.import_model(path, **header))  # type: ignore[arg-type]

    def is_serving(self, timeout: float = 2.0) -> bool:
        return any(client.is_serving(timeout) for client in self.replicas.clients())

    def close(self) -> None:
        self.replicas.close()
