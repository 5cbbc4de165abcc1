"""Settings: typed, validated, and a bad value names its variable."""

from __future__ import annotations

import pytest

from services.common.config import load_settings, settings_env
from services.common.errors import ConfigError


def test_defaults_are_the_spec_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("SDSTACK_"):
            monkeypatch.delenv(name)
    settings = load_settings()
    assert (settings.gateway_port, settings.generator_port) == (7860, 50051)
    assert (settings.trainer_port, settings.gallery_port, settings.s3_port) == (50052, 50053, 8333)
    assert (
        settings.generator_metrics_port,
        settings.trainer_metrics_port,
        settings.gallery_metrics_port,
    ) == (9101, 9102, 9103)
    assert settings.target("gallery") == "127.0.0.1:50053"
    assert settings.resolved_database_url.startswith("sqlite:///")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SDSTACK_GATEWAY_PORT", "not-a-port"),
        ("SDSTACK_GENERATOR_PORT", "70000"),
        ("SDSTACK_DEVICE", "tpu"),
        ("SDSTACK_PRECISION", "half"),
        ("SDSTACK_COMPILE_UNET", "fast"),
        ("SDSTACK_VAE_TILE_SIZE", "100"),
        ("SDSTACK_VAE_TILE_SIZE", "32"),
        ("SDSTACK_QUEUE_SIZE", "0"),
        ("SDSTACK_S3_SECURE", "maybe"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert raised.value.setting == variable
    assert str(raised.value).startswith(f"{variable}: ")


def test_environment_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(gateway_port=8123, device="cpu")
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    assert load_settings() == settings
