"""Every `SDSTACK_*` setting, typed and validated in one place.

`load_settings()` reads the environment (and a `.env` file if present) once at start-up;
a bad value stops the process with one line naming the setting (`ConfigError`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.errors import ConfigError

Port = int
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$")
_USER = re.compile(r"^[A-Za-z0-9_.@\-]{1,128}$")
MIN_API_KEY_CHARS = 8


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
    generator_addrs: str = Field(
        "", description="Replicas as host:port,host:port (each name may resolve to several)."
    )
    trainer_addrs: str = Field("", description="Trainer replicas as host:port,host:port.")
    gallery_addrs: str = Field("", description="Gallery replicas as host:port,host:port.")
    replica_retry_seconds: float = Field(
        5.0, gt=0, le=300, description="How long a replica that failed is skipped."
    )
    replica_resolve_seconds: float = Field(
        30.0, gt=0, description="How often replica names are resolved again (DNS round robin)."
    )

    api_keys: str = Field(
        "", description="key:user pairs, comma separated; when set (or a keys file), auth is on."
    )
    api_keys_file: Path | None = Field(
        None, description="File of `key:user` lines (# comments); read at start-up."
    )
    rate_limit_per_minute: float = Field(
        600.0, ge=0, description="Requests per minute per API key; 0 = no limit."
    )
    rate_limit_burst: int = Field(60, ge=1, description="Requests a key may make at once.")
    max_body_bytes: int = Field(
        128 * 1024 * 1024, ge=1024, description="Largest JSON request body (base64 images)."
    )
    max_upload_bytes: int = Field(
        16 * 1024 * 1024 * 1024, ge=1024, description="Largest model file upload."
    )

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
    precision: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Generator weights: auto = float16 on a GPU, bfloat16 on CPUs with AMX, "
        "else float32.",
    )
    compile_unet: Literal["off", "default", "max-autotune", "reduce-overhead"] = Field(
        "off",
        description="Compile each checkpoint's U-Net with torch.compile in this mode when it "
        "loads (`reduce-overhead` adds CUDA graphs, GPU only): faster passes once a first pass "
        "per picture size has compiled; LoRA switches and mixes reuse the compiled graphs.",
    )
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
    max_batch_images: int = Field(
        8,
        ge=1,
        le=64,
        description="Images generated together, sharing each U-Net pass (step-level batching).",
    )
    max_pixels: int = Field(2048 * 2048, ge=64 * 64, description="Largest width×height accepted.")
    vae_tile_size: int = Field(
        1024,
        ge=0,
        description="Pictures with a side longer than this go through the VAE in tiles of "
        "this size, so its memory stays bounded; 0 never tiles.",
    )

    trainer_runner: Literal["local", "kubernetes"] = Field(
        "local", description="Where training jobs run: a local worker process or Kubernetes Jobs."
    )
    trainer_namespace: str = Field("sdstack", description="Namespace of the training Jobs.")
    trainer_job_template: str = Field(
        "sdstack-trainer-job",
        description="CronJob whose jobTemplate each training Job copies, or a path to its YAML.",
    )
    trainer_slots: int = Field(
        0, ge=0, le=64, description="Jobs run at once; 0 = one per GPU (one without a GPU)."
    )
    trainer_max_attempts: int = Field(
        4, ge=1, le=100, description="Runs of a job whose worker died before it is FAILED."
    )
    trainer_max_dataset_bytes: int = Field(
        2 * 1024 * 1024 * 1024, ge=1024, description="Largest dataset upload, unpacked."
    )
    trainer_max_dataset_files: int = Field(
        10_000, ge=1, le=1_000_000, description="Most files in one dataset upload."
    )

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

    @field_validator("generator_addrs", "trainer_addrs", "gallery_addrs")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        for address in filter(None, (a.strip() for a in value.split(","))):
            match = _ADDRESS.match(address)
            if match is None or not 0 < int(match.group(2)) < 65536:
                raise ValueError(f"{address!r} is not host:port")
        return value

    @field_validator("vae_tile_size")
    @classmethod
    def _tile_of_whole_latents(cls, value: int) -> int:
        if value and (value < 64 or value % 8):
            raise ValueError("must be 0 (no tiling) or a multiple of 8, at least 64")
        return value

    @field_validator("api_keys")
    @classmethod
    def _key_pairs(cls, value: str) -> str:
        parse_api_keys(value.replace(",", "\n"))
        return value

    def api_key_users(self) -> dict[str, str]:
        """API key → user id, from `api_keys` and `api_keys_file`; empty means auth is off."""
        users = parse_api_keys(self.api_keys.replace(",", "\n"))
        if self.api_keys_file is not None:
            try:
                text = self.api_keys_file.read_text(encoding="utf-8")
                users |= parse_api_keys(text)
            except (OSError, ValueError) as error:
                raise ConfigError("SDSTACK_API_KEYS_FILE", str(error)) from None
        return users

    def target(self, service: Literal["generator", "trainer", "gallery"]) -> str:
        """The address clients dial for `service`."""
        explicit = getattr(self, f"{service}_target")
        return explicit or f"{self.host}:{getattr(self, f'{service}_port')}"

    def addresses(self, service: Literal["generator", "trainer", "gallery"]) -> list[str]:
        """Every replica address of `service`: `<service>_addrs`, else `target(service)`."""
        listed = [a.strip() for a in getattr(self, f"{service}_addrs").split(",") if a.strip()]
        return listed or [self.target(service)]

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'sdstack.db').resolve()}"

    @property
    def resolved_model_cache_dir(self) -> Path:
        return self.model_cache_dir or self.data_dir / "cache" / "models"

    @property
    def resolved_clip_tokenizer_dir(self) -> Path:
        return self.clip_tokenizer_dir or self.data_dir / "clip" / "tokenizer"


def parse_api_keys(text: str) -> dict[str, str]:
    """`key:user` lines (blank lines and `#` comments skipped) as {key: user}."""
    users: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, user = (part.strip() for part in line.rpartition(":"))
        if not sep or len(key) < MIN_API_KEY_CHARS or not _USER.match(user):
            raise ValueError(
                f"each entry must be key:user, the key at least {MIN_API_KEY_CHARS} characters "
                "and the user 1-128 of A-Z a-z 0-9 _ . @ -"
            )
        users[key] = user
    return users


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
