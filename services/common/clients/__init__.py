"""Typed gRPC clients of the services, used by the gateway, the CLI and the tests."""

from services.common.clients.gallery import GalleryClient
from services.common.clients.generator import GeneratorClient
from services.common.clients.trainer import TrainerClient

__all__ = ["GalleryClient", "GeneratorClient", "TrainerClient"]
