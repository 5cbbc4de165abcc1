"""API keys and per-key rate limits.

When `SDSTACK_API_KEYS` (or `SDSTACK_API_KEYS_FILE`) names keys, every route but the
health, metrics and documentation ones needs `Authorization: Bearer <key>`; the A1111
routes also take HTTP Basic `user:key` (as A1111's `--api-auth user:password`). The key's
user becomes the owner every service sees. Each key has a token bucket: beyond it, 429
with `Retry-After`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from gateway.errors import error_body

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/"})
OPEN_PREFIXES = ("/docs", "/ui/")  # the web UI's static files: its API calls carry a key
A1111_PREFIX = "/sdapi/"


@dataclass
class TokenBucket:
    """`rate` tokens a second up to `burst`; each request takes one."""

    rate: float
    burst: int
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one is there."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def wait_seconds(self, key: str) -> float:
        """0 when `key` may go on now, else how long it should wait."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self.burst, now)
            return bucket.take(now)


class Authenticator:
    def __init__(self, users_by_key: dict[str, str], limiter: RateLimiter) -> None:
        self.users_by_key = dict(users_by_key)
        self.limiter = limiter

    @property
    def enabled(self) -> bool:
        return bool(self.users_by_key)

    def user_of(self, key: str) -> str | None:
        """The user of a key, compared in constant time."""
        found = None
        for known, user in self.users_by_key.items():
            if hmac.compare_digest(known.encode(), key.encode()):
                found = user
        return found

    def key_from(self, request: Request) -> str | None:
        """The API key a request presents: bearer, or basic `user:key` on the A1111 API."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            return value
        if scheme.lower() == "basic" and request.url.path.startswith(A1111_PREFIX):
            try:
                user, _, key = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return key if self.user_of(key) == user else None
        return None

    async def __call__(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        if not self.enabled or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return await call_next(request)
        key = self.key_from(request)
        user = self.user_of(key) if key else None
        if user is None:
            return _unauthorized(path)
        wait = self.limiter.wait_seconds(key)  # type: ignore[arg-type]
        if wait > 0:
            body = error_body("RESOURCE_EXHAUSTED", f"rate limit: retry in {wait:.1f}s")
            return JSONResponse(body, 429, {"Retry-After": str(max(1, math.ceil(wait)))})
        request.state.owner = user
        return await call_next(request)


def _unauthorized(path: str) -> JSONResponse:
    challenge = 'Basic realm="sdstack"' if path.startswith(A1111_PREFIX) else "Bearer"
    body = error_body("UNAUTHENTICATED", "a valid API key is required (Authorization: Bearer)")
    return JSONResponse(body, 401, {"WWW-Authenticate": challenge})
