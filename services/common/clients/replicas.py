"""Several replicas of one service: addresses, DNS round robin, and skipping dead ones.

Stateless services (gallery, trainer) need no more than gRPC's own balancing: one channel
whose target lists every replica (`balanced_target`), round-robin over the live ones, with
idempotent calls retried on UNAVAILABLE. The generator's jobs live on one replica, so its
callers keep a client per replica (`ReplicaSet`) to send watch and cancel where a job runs.
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from services.common.clients.channel import ServiceClient

C = TypeVar("C", bound=ServiceClient)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def resolve(address: str) -> list[str]:
    """Every address a `host:port` names (a DNS name may have several records).

    A name that does not resolve now is kept as it is: gRPC retries it on its own.
    """
    host, port = split_address(address)
    try:
        records = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return [address]
    found = dict.fromkeys(join_address(str(r[4][0]), port) for r in records)
    return list(found) or [address]


def balanced_target(addresses: list[str]) -> str:
    """One gRPC target for every replica: a single address as it is (gRPC's resolver finds
    all its records), several as an `ipv4:`/`ipv6:` list of their resolved addresses."""
    if len(addresses) == 1:
        return addresses[0]
    resolved = [a for address in addresses for a in resolve(address)]
    v6 = [a for a in resolved if _is_ip(split_address(a)[0], 6)]
    v4 = [a for a in resolved if _is_ip(split_address(a)[0], 4)]
    if v4:
        return "ipv4:" + ",".join(v4)
    if v6:
        return "ipv6:" + ",".join(v6)
    return addresses[0]


def _is_ip(host: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(host).version == version
    except ValueError:
        return False


class ReplicaSet(Generic[C]):
    """A client per replica address, resolved again every `resolve_every` seconds.

    `ordered()` gives the clients to try, starting at the next one in turn, with replicas
    that failed in the last `retry_after` seconds at the end.
    """

    def __init__(
        self,
        addresses: list[str],
        factory: Callable[[str], C],
        *,
        retry_after: float = 5.0,
        resolve_every: float = 30.0,
    ) -> None:
        self.addresses = list(addresses)
        self.factory = factory
        self.retry_after = retry_after
        self.resolve_every = resolve_every
        self._clients: dict[str, C] = {}
        self._down_until: dict[str, float] = {}
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._next_resolve = 0.0

    def clients(self) -> list[C]:
        with self._lock:
            if time.monotonic() >= self._next_resolve:
                self._refresh()
            return list(self._clients.values())

    def _refresh(self) -> None:
        targets = [t for address in self.addresses for t in resolve(address)]
        kept = {t: self._clients.get(t) or self.factory(t) for t in dict.fromkeys(targets)}
        # Clients of replicas gone from DNS are dropped, not closed: a stream may still use one.
        self._clients = kept
        self._next_resolve = time.monotonic() + self.resolve_every

    def get(self, target: str) -> C | None:
        with self._lock:
            return self._clients.get(target)

    def ordered(self) -> list[C]:
        clients = self.clients()
        if not clients:
            return []
        start = next(self._turn) % len(clients)
        turn = clients[start:] + clients[:start]
        now = time.monotonic()
        live = [c for c in turn if self._down_until.get(c.target, 0.0) <= now]
        return live + [c for c in turn if c not in live]

    def mark_down(self, client: C) -> None:
        with self._lock:
            self._down_until[client.target] = time.monotonic() + self.retry_after

    def mark_up(self, client: C) -> None:
        with self._lock:
            self._down_until.pop(client.target, None)

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients = {}
