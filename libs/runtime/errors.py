"""Errors a servicer raises, and their rich ``google.rpc.Status`` form.

Servicers raise these; the error interceptor turns them into the gRPC status
that fits, with details a caller can act on (BadRequest field violations,
PreconditionFailure, ErrorInfo with the syncgov reason and metadata).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import grpc
import nats.errors
import nats.js.errors
import redis.exceptions
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "syncgov.dev"
# gRPC carries error details in trailing metadata, which peers cap (16 KiB by default): an error must stay
# readable whatever the request held, so its parts are bounded.
MAX_VIOLATIONS = 15
MAX_TEXT = 160


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field: its path in the request (``purchase_order.lines[2].quantity``) and why."""

    field: str
    description: str


@dataclass(eq=False)
class ServiceError(Exception):
    """Base of the errors servicers raise; ``reason`` is a stable UPPER_SNAKE code for machines."""

    message: str
    reason: str = "ERROR"
    metadata: Mapping[str, str] = field(default_factory=dict)

    code = grpc.StatusCode.UNKNOWN
    rpc_code = code_pb2.UNKNOWN

    def __post_init__(self) -> None:
        Exception.__init__(self, self.message)

    def details(self) -> list[any_pb2.Any]:
        metadata = {_clip(k, 40): _clip(v, 1000) for k, v in list(self.metadata.items())[:10]}
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=metadata)
        packed = any_pb2.Any()
        packed.Pack(info)
        return [packed]

    def to_status(self) -> status_pb2.Status:
        return status_pb2.Status(code=self.rpc_code, message=_clip(self.message, 500), details=self.details())


@dataclass(eq=False)
class InvalidArgument(ServiceError):
    violations: Iterable[FieldViolation] = ()
    reason: str = "INVALID_ARGUMENT"
    code = grpc.StatusCode.INVALID_ARGUMENT
    rpc_code = code_pb2.INVALID_ARGUMENT

    def details(self) -> list[any_pb2.Any]:
        violations = list(self.violations)
        shown = [
            error_details_pb2.BadRequest.FieldViolation(field=_clip(v.field, 120), description=_clip(v.description))
            for v in violations[:MAX_VIOLATIONS]
        ]
        if len(violations) > MAX_VIOLATIONS:
            shown.append(
                error_details_pb2.BadRequest.FieldViolation(
                    field="(request)", description=f"and {len(violations) - MAX_VIOLATIONS} more problem(s)"
                )
            )
        bad_request = error_details_pb2.BadRequest(field_violations=shown)
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        return [packed, *super().details()]


@dataclass(eq=False)
class FailedPrecondition(ServiceError):
    subject: str = ""
    reason: str = "FAILED_PRECONDITION"
    code = grpc.StatusCode.FAILED_PRECONDITION
    rpc_code = code_pb2.FAILED_PRECONDITION

    def details(self) -> list[any_pb2.Any]:
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=self.reason, subject=_clip(self.subject), description=_clip(self.message, 500)
                )
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(failure)
        return [packed, *super().details()]


@dataclass(eq=False)
class NotFound(ServiceError):
    reason: str = "NOT_FOUND"
    code = grpc.StatusCode.NOT_FOUND
    rpc_code = code_pb2.NOT_FOUND


@dataclass(eq=False)
class AlreadyExists(ServiceError):
    reason: str = "ALREADY_EXISTS"
    code = grpc.StatusCode.ALREADY_EXISTS
    rpc_code = code_pb2.ALREADY_EXISTS


@dataclass(eq=False)
class Aborted(ServiceError):
    reason: str = "ABORTED"
    code = grpc.StatusCode.ABORTED
    rpc_code = code_pb2.ABORTED


@dataclass(eq=False)
class PermissionDenied(ServiceError):
    reason: str = "PERMISSION_DENIED"
    code = grpc.StatusCode.PERMISSION_DENIED
    rpc_code = code_pb2.PERMISSION_DENIED


@dataclass(eq=False)
class Unauthenticated(ServiceError):
    reason: str = "UNAUTHENTICATED"
    code = grpc.StatusCode.UNAUTHENTICATED
    rpc_code = code_pb2.UNAUTHENTICATED


@dataclass(eq=False)
class Unimplemented(ServiceError):
    """An RPC the contract declares and this release does not serve yet."""

    reason: str = "NOT_IMPLEMENTED"
    code = grpc.StatusCode.UNIMPLEMENTED
    rpc_code = code_pb2.UNIMPLEMENTED


@dataclass(eq=False)
class Unavailable(ServiceError):
    """A transient fault (the broker or Valkey did not answer in time): safe to retry with the same
    idempotency key after ``retry_after_seconds``."""

    reason: str = "UNAVAILABLE"
    retry_after_seconds: float = 1.0
    code = grpc.StatusCode.UNAVAILABLE
    rpc_code = code_pb2.UNAVAILABLE

    def details(self) -> list[any_pb2.Any]:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(int(self.retry_after_seconds * 1000))
        packed = any_pb2.Any()
        packed.Pack(retry)
        return [packed, *super().details()]


def transient(error: BaseException) -> Unavailable | None:
    """The UNAVAILABLE answer for an infrastructure fault a retry may get past, or None for anything else.

    A timeout on a publish leaves it unknown whether the event was stored; the retry, carrying the same
    idempotency key, is recognised by the object's history, so retrying is always safe."""
    if isinstance(error, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return Unavailable(f"Valkey did not answer ({type(error).__name__}); retry", reason="STORE_UNAVAILABLE")
    if isinstance(error, redis.exceptions.BusyLoadingError | redis.exceptions.ReadOnlyError):
        return Unavailable(f"Valkey is not ready ({type(error).__name__}); retry", reason="STORE_UNAVAILABLE")
    if isinstance(
        error,
        nats.errors.TimeoutError
        | nats.errors.ConnectionClosedError
        | nats.errors.NoServersError
        | nats.errors.NoRespondersError
        | nats.errors.StaleConnectionError
        | nats.errors.ConnectionReconnectingError
        | nats.errors.OutboundBufferLimitError
        | nats.js.errors.ServiceUnavailableError
        | nats.js.errors.NoStreamResponseError
        | nats.js.errors.ServerError
        | TimeoutError,
    ):
        return Unavailable(
            f"the event store did not answer ({type(error).__name__}); retry", reason="BROKER_UNAVAILABLE"
        )
    if isinstance(error, ConnectionError | OSError) or _closed_under_us(error):
        return Unavailable(f"a connection failed ({type(error).__name__}); retry", reason="CONNECTION_FAILED")
    return None


def _closed_under_us(error: BaseException) -> bool:
    """uvloop's answer to a write on a connection a fault just closed (a client library reusing it before it
    noticed): a RuntimeError naming the closed transport, not a ConnectionError, though it is exactly that. Seen
    under chaos from redis-py's reconnect (``unable to perform operation on <TCPTransport closed=True ...>; the
    handler is closed``)."""
    return isinstance(error, RuntimeError) and "the handler is closed" in str(error) and "closed=True" in str(error)
