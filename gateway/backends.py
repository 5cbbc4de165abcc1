"""The gateway's clients of the services, shared by every route."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends, Request

from services.common.clients import GalleryClient, TrainerClient
from services.common.clients.generator_router import GeneratorRouter
from services.common.clients.replicas import balanced_target
from services.common.config import Settings

LOCAL_OWNER = "local"


class Backend(Protocol):
    def is_serving(self, timeout: float = 2.0) -> bool: ...

    def close(self) -> None: ...


@dataclass
class Backends:
    """The generator's replicas behind a router (jobs stay on one replica); the gallery
    and trainer behind one balanced channel each (they keep no state of their own)."""

    generator: GeneratorRouter
    gallery: GalleryClient
    trainer: TrainerClient

    @classmethod
    def connect(cls, settings: Settings) -> Backends:
        timeout = settings.request_timeout_seconds
        return cls(
            generator=GeneratorRouter.connect(
                settings.addresses("generator"),
                timeout=timeout,
                retry_after=settings.replica_retry_seconds,
                resolve_every=settings.replica_resolve_seconds,
            ),
            gallery=GalleryClient(balanced_target(settings.addresses("gallery")), timeout=timeout),
            trainer=TrainerClient(balanced_target(settings.addresses("trainer")), timeout=timeout),
        )

    def all(self) -> dict[str, Backend]:
        return {"generator": self.generator, "gallery": self.gallery, "trainer": self.trainer}

    def close(self) -> None:
        for client in self.all().values():
            client.close()


def backends(request: Request) -> Backends:
    """FastAPI dependency: the app's backend clients."""
    return request.app.state.backends


def owner(request: Request) -> str:
    """FastAPI dependency: who is asking (set by the auth middleware; one local user
    when no API keys are configured)."""
    return getattr(request.state, "owner", LOCAL_OWNER)


Clients = Annotated[Backends, Depends(backends)]
Owner = Annotated[str, Depends(owner)]
