"""A domain's refusal at the edge: the gRPC status that fits, and the exception it raises when it names one."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from libs.runtime.decider import Refusal, RefusalKind
from libs.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ServiceError,
)
from libs.runtime.exception_reporter import ExceptionReporter
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import exception_pb2


def refusal_error(refusal: Refusal, **metadata: str) -> ServiceError:
    merged = {**refusal.metadata, **metadata}
    if refusal.kind is RefusalKind.INVALID:
        return InvalidArgument(
            refusal.message,
            reason=refusal.reason,
            metadata=merged,
            violations=[FieldViolation(path, text) for path, text in refusal.violations],
        )
    if refusal.kind is RefusalKind.NOT_FOUND:
        return NotFound(refusal.message, reason=refusal.reason, metadata=merged)
    if refusal.kind is RefusalKind.PRECONDITION:
        return FailedPrecondition(refusal.message, reason=refusal.reason, metadata=merged, subject=refusal.subject)
    return AlreadyExists(refusal.message, reason=refusal.reason, metadata=merged)


def exception_type(name: str) -> exception_pb2.ExceptionType:
    """The contract's exception type for a refusal's ``exception`` name (``duplicate_transaction``)."""
    # protoc's .pyi types enum values as the enum class but Value() as a plain int; at run time both are ints.
    return cast(exception_pb2.ExceptionType, exception_pb2.ExceptionType.Value(f"EXCEPTION_TYPE_{name.upper()}"))


async def refused(
    refusal: Refusal,
    *,
    exceptions: ExceptionReporter,
    object_ref: types_pb2.ObjectRef,
    render: Callable[[object], str],
    workflow_key: str = "",
    policy_revision: int = 0,
) -> ServiceError:
    """The error to raise for ``refusal``, after raising the exception it names (with its evidence rendered)."""
    if not refusal.exception:
        return refusal_error(refusal)
    if refusal.exception == "duplicate_transaction" and exceptions.metrics is not None:
        exceptions.metrics.duplicate_caught(object_ref.object_type)
    exception = await exceptions.raise_exception(
        exception_type(refusal.exception),
        exception_pb2.SEVERITY_HIGH,
        object_ref,
        refusal.message,
        evidence=[render(item) for item in refusal.evidence],
        workflow_key=workflow_key,
        policy_revision=policy_revision,
    )
    return refusal_error(refusal, exception_id=exception.exception_id)
