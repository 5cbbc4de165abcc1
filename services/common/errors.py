"""Domain errors shared by every service.

Services raise these; one gRPC interceptor turns them into status codes with an
`sdstack.v1.ErrorDetail` attached, and the gateway turns those into HTTP JSON errors.
No handler calls `context.abort` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import grpc


@dataclass(frozen=True)
class FieldViolation:
    """One broken rule: `field` is the request field's path (e.g. `params.width`)."""

    field: str
    rule: str


class SdstackError(Exception):
    """Base of every error a client may see. `status` is the gRPC code it maps to."""

    status: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def violations(self) -> list[FieldViolation]:
        return []

    @property
    def retry_after_seconds(self) -> float | None:
        return None


class InvalidArgument(SdstackError):
    """A request field breaks a rule. Always names the field and the rule."""

    status = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self._violations = [FieldViolation(field, rule)]

    @classmethod
    def many(cls, violations: list[FieldViolation]) -> InvalidArgument:
        first = violations[0]
        error = cls(first.field, first.rule)
        error._violations = list(violations)
        error.message = "; ".join(f"{v.field}: {v.rule}" for v in violations)
        error.args = (error.message,)
        return error

    @property
    def violations(self) -> list[FieldViolation]:
        return self._violations


class NotFound(SdstackError):
    status = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} not found: {name}")
        self.kind = kind
        self.name = name


class AlreadyExists(SdstackError):
    status = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(SdstackError):
    status = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class PermissionDenied(SdstackError):
    status = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class Cancelled(SdstackError):
    status = grpc.StatusCode.CANCELLED
    reason = "CANCELLED"


class DeadlineExceeded(SdstackError):
    """The work ran past its deadline and was stopped."""

    status = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Unavailable(SdstackError):
    """A dependency (object store, database, another service) cannot be reached."""

    status = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


@dataclass
class Overloaded(SdstackError):
    """The bounded queue is full; the client should retry after `retry_after` seconds."""

    message: str = "server is busy"
    retry_after: float = 1.0
    status: grpc.StatusCode = field(default=grpc.StatusCode.RESOURCE_EXHAUSTED, init=False)
    reason: str = field(default="RESOURCE_EXHAUSTED", init=False)

    def __post_init__(self) -> None:
        Exception.__init__(self, self.message)

    @property
    def retry_after_seconds(self) -> float | None:
        return self.retry_after


class ConfigError(Exception):
    """A setting is wrong; start-up stops with one line naming it."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class RemoteError(SdstackError):
    """An error another service answered with, as a client sees it."""

    def __init__(
        self,
        status: grpc.StatusCode,
        message: str,
        violations: list[FieldViolation] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = status.name
        self._violations = violations or []
        self._retry_after = retry_after

    @property
    def violations(self) -> list[FieldViolation]:
        return self._violations

    @property
    def retry_after_seconds(self) -> float | None:
        return self._retry_after


class Unimplemented(SdstackError):
    """A mode or option the contract defines that this build does not offer yet."""

    status = grpc.StatusCode.UNIMPLEMENTED
    reason = "UNIMPLEMENTED"


ErrorTranslator = Callable[[BaseException], SdstackError | None]
_TRANSLATORS: list[ErrorTranslator] = []


def register_translator(translator: ErrorTranslator) -> None:
    """Adds a function that turns a library's exception (e.g. a database driver's "server
    gone") into a domain error; it returns None for exceptions it does not know."""
    if translator not in _TRANSLATORS:
        _TRANSLATORS.append(translator)


def translate(error: BaseException) -> SdstackError | None:
    """The domain error a registered translator makes of `error`, else None."""
    if isinstance(error, SdstackError):
        return error
    for translator in _TRANSLATORS:
        translated = translator(error)
        if translated is not None:
            return translated
    return None
