"""Every `SDSTACK_*` setting, typed and validated in one place.

`load_settings()` reads the environment (and a `.env` file if present) once at start-up;
a bad value stops the process with one line naming the setting (`ConfigError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.errors import ConfigError

Port = int


class Settings(BaseSettings):
    """sdstack settings; each field is read from `SDSTACK_<FIELD NAME IN CAPITALS>`."""

    model_config = SettingsConfigDict(
        env_prefix="SDSTACK_", env_file=".env", extra="ignore", frozen=True
    )

    data_dir: Path = Field(Path(".data"), description="Databases, caches, local S3 data.")
    host: str = Field("127.0.0.1", description="Address every server binds to.")

    gateway_port: Port = Field(7860, ge=1, le=65535)
    generator_port: Port = Field(50051, ge=1, le=65535)
    trainer_port: Port = Field(50052, ge=1, le=65535)
    gallery_port: Port = Field(50053, ge=1, le=65535)
    generator_metrics_port: Port = Field(9101, ge=1, le=65535)
    trainer_metrics_port: Port = Field(9102, ge=1, le=65535)
    gallery_metrics_port: Port = Field(9103, ge=1, le=65535)

    generator_target: str = Field("", description="host:port of the generator; default host:port.")
    trainer_target: str = Field("", description="host:port of the trainer; default host:port.")
    gallery_target: str = Field("", description="host:port of the gallery; default host:port.")

    s3_endpoint: str = Field(
        "", description="host:port of an S3 server; empty starts the bundled local one."
    )
    s3_port: Port = Field(8333, ge=1, le=65535, description="Port of the bundled local S3.")
    s3_access_key: str = Field("sdstack", min_length=3)
    s3_secret_key: str = Field("sdstack-local-secret", min_length=8)
    s3_secure: bool = False
    s3_region: str = ""

    database_url: str = Field("", description="SQLAlchemy URL; default SQLite in data_dir.")

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    install_demo_model: bool = Field(True, description="Install the tiny demo model if none.")
    default_checkpoint: str = Field("", description="Default checkpoint name; default: first.")
    model_cache_dir: Path | None = Field(None, description="Default data_dir/cache/models.")
    model_cache_max_loaded: int = Field(2, ge=1, le=64, description="Checkpoints kept loaded.")
    model_cache_max_bytes: int = Field(
        0, ge=0, description="Memory for loaded checkpoints; 0 = half of the device's memory."
    )
    clip_tokenizer_dir: Path | None = Field(
        None, description="CLIP tokenizer folder; default data_dir/clip/tokenizer."
    )
    queue_size: int = Field(
        16, ge=1, le=10_000, description="Jobs waiting before RESOURCE_EXHAUSTED."
    )
    max_pixels: int = Field(2048 * 2048, ge=64 * 64, description="Largest width×height accepted.")

    grpc_max_message_bytes: int = Field(64 * 1024 * 1024, ge=4 * 1024 * 1024)
    grpc_workers: int = Field(16, ge=1, le=1024)
    request_timeout_seconds: float = Field(600.0, gt=0)
    shutdown_grace_seconds: float = Field(30.0, ge=0)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "text"

    @field_validator("host")
    @classmethod
    def _loopback_or_explicit(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    def target(self, service: Literal["generator", "trainer", "gallery"]) -> str:
        """The address clients dial for `service`."""
        explicit = getattr(self, f"{service}_target")
        return explicit or f"{self.host}:{getattr(self, f'{service}_port')}"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'sdstack.db').resolve()}"

    @property
    def resolved_model_cache_dir(self) -> Path:
        return self.model_cache_dir or self.data_dir / "cache" / "models"

    @property
    def resolved_clip_tokenizer_dir(self) -> Path:
        return self.clip_tokenizer_dir or self.data_dir / "clip" / "tokenizer"


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as `SDSTACK_*` variables, so child processes see exactly the same."""
    return {
        f"SDSTACK_{name.upper()}": str(value)
        for name, value in settings.model_dump().items()
        if value is not None
    }


def load_settings(**overrides: object) -> Settings:
    """Reads the settings; raises `ConfigError` naming the first bad setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "settings"
        raise ConfigError(f"SDSTACK_{field.upper()}", first["msg"]) from None
