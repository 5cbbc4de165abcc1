"""The gateway's clients of the services, shared by every route."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from services.common.clients import GalleryClient, GeneratorClient, TrainerClient
from services.common.config import Settings

LOCAL_OWNER = "local"


@dataclass
class Backends:
    generator: GeneratorClient
    gallery: GalleryClient
    trainer: TrainerClient

    @classmethod
    def connect(cls, settings: Settings) -> Backends:
        timeout = settings.request_timeout_seconds
        return cls(
            generator=GeneratorClient(settings.target("generator"), timeout=timeout),
            gallery=GalleryClient(settings.target("gallery"), timeout=timeout),
            trainer=TrainerClient(settings.target("trainer"), timeout=timeout),
        )

    def all(self) -> dict[str, GeneratorClient | GalleryClient | TrainerClient]:
        return {"generator": self.generator, "gallery": self.gallery, "trainer": self.trainer}

    def close(self) -> None:
        for client in self.all().values():
            client.close()


def backends(request: Request) -> Backends:
    """FastAPI dependency: the app's backend clients."""
    return request.app.state.backends


def owner(request: Request) -> str:
    """FastAPI dependency: who is asking. One local user until API keys exist."""
    return LOCAL_OWNER


Clients = Annotated[Backends, Depends(backends)]
Owner = Annotated[str, Depends(owner)]
