"""Security checks of issue 9: API keys compared in constant time, CORS closed by default,
secrets (API keys, the S3 secret key) never in a service's logs or answers.

(Uploads typed by content, not by name, are rows of the bad-input table: a pickle named
`.safetensors` or `.onnx`, HTML named `.png`, a GIF/JavaScript polyglot as a picture.)
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway import auth
from gateway.auth import Authenticator, RateLimiter
from services.common.clients import GalleryClient
from services.common.config import Settings, settings_env
from tests.stack_fixtures import RunningStack, _beside

ALICE = "alice-secret-key-7f3a9c"
WRONG = "guessed-key-0000000000"


def test_api_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every known key is compared with `hmac.compare_digest`, with no early exit, so the
    time of a refusal says nothing about how much of a key was right."""
    compared: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    keys = {"first-key-0000001": "a", ALICE: "alice", "third-key-0000003": "c"}
    authenticator = Authenticator(keys, RateLimiter(0, 1))
    assert authenticator.user_of(ALICE) == "alice"
    assert len(compared) == len(keys)
    compared.clear()
    assert authenticator.user_of(ALICE[:-1] + "x") is None
    assert len(compared) == len(keys)


def test_cors_is_closed_by_default(running_stack: RunningStack) -> None:
    """No cross-origin page may call the API from a browser: preflights and simple requests
    from another origin get no Access-Control-Allow-* headers."""
    evil = "https://evil.example"
    with running_stack.http() as client:
        preflight = client.options(
            "/v1/generations",
            headers={
                "origin": evil,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        simple = client.get("/v1/models", headers={"origin": evil})
    assert simple.status_code == 200
    for response in (preflight, simple):
        allowed = [h for h in response.headers if h.lower().startswith("access-control-allow")]
        assert allowed == [], response.headers


# -- secrets never logged --------------------------------------------------------------------


def _spawn_logged(module: str, settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {"TRANSFORMERS_VERBOSITY": "error", **os.environ, **settings_env(settings)}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait(check: Callable[[], bool], process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 120
    while not check():
        assert process.poll() is None, f"{what} exited during start-up"
        assert time.monotonic() < deadline, f"{what} was not ready in time"
        time.sleep(0.3)


@pytest.fixture
def logged_services(
    running_stack: RunningStack, tmp_path: Path
) -> Iterator[tuple[Settings, Path, Path]]:
    """A gallery and a gateway beside the stack, at DEBUG, their output kept in files."""
    settings = _beside(running_stack, tmp_path / "data", log_level="DEBUG")
    settings = _beside(
        running_stack,
        tmp_path / "data",
        log_level="DEBUG",
        api_keys=f"{ALICE}:alice",
        gallery_target=settings.target("gallery"),
        gallery_port=settings.gallery_port,
        gallery_metrics_port=settings.gallery_metrics_port,
    )
    gallery_log, gateway_log = tmp_path / "gallery.log", tmp_path / "gateway.log"
    gallery = _spawn_logged("services.gallery.server", settings, gallery_log)
    gateway = None
    try:
        with GalleryClient(settings.target("gallery")) as client:
            _wait(client.is_serving, gallery, "gallery")
        gateway = _spawn_logged("gateway.server", settings, gateway_log)
        base = f"http://{settings.host}:{settings.gateway_port}"

        def answers() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(answers, gateway, "gateway")
        yield settings, gallery_log, gateway_log
    finally:
        if gateway is not None:
            _stop(gateway)
        _stop(gallery)


@pytest.mark.integration
def test_secrets_are_never_logged_nor_answered(
    logged_services: tuple[Settings, Path, Path],
) -> None:
    settings, gallery_log, gateway_log = logged_services
    base = f"http://{settings.host}:{settings.gateway_port}"
    basic = base64.b64encode(f"alice:{ALICE}".encode()).decode()
    answers = []
    with httpx.Client(base_url=base, timeout=120) as client:
        key = {"authorization": f"Bearer {ALICE}"}
        made = client.post(
            "/v1/generations",
            headers=key,
            json={"prompt": "a key", "seed": 1, "width": 64, "height": 64, "steps": 1},
        )
        assert made.status_code == 200, made.text
        image_id = made.json()["images"][0]["id"]
        for response in (
            made,
            client.get(f"/v1/images/{image_id}/url", headers=key),
            client.get("/sdapi/v1/cmd-flags", headers=key),
            client.get("/sdapi/v1/options", headers={"authorization": f"Basic {basic}"}),
            client.get("/v1/images", headers={"authorization": f"Bearer {WRONG}"}),
            client.get("/v1/images/" + "0" * 32, headers=key),
            client.get("/metrics"),
        ):
            answers.append(response.text)
        assert answers[1] and answers[4]
    time.sleep(0.5)  # let the last lines reach the files
    logs = gallery_log.read_text(errors="replace") + gateway_log.read_text(errors="replace")
    assert "gallery ready" in logs  # the output really was captured, at DEBUG
    assert "DEBUG" in logs
    secrets = {
        "API key": ALICE,
        "presented wrong key": WRONG,
        "basic credentials": basic,
        "S3 secret key": settings.s3_secret_key,
    }
    for what, secret in secrets.items():
        assert secret not in logs, f"the {what} is in the logs"
        for text in answers:
            assert secret not in text, f"the {what} is in an answer"
