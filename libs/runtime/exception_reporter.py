"""Raising exceptions (DESIGN §5.5): every service publishes them the same way.

The exception router consumes ``<ns>.exception.*.raised``, de-duplicates by
fingerprint, routes by policy and tracks to closure. A raised exception is an
event in the EXCEPTION stream from the moment it is raised, so nothing depends
on the router being up. A component that can tell when its condition ends (an
SLA breach whose stage completed) clears it the same way
(``<ns>.exception.<clear id>.cleared``) and the router closes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Iterable
from typing import cast

from libs.runtime.events import Event, EventPublisher, WrongLastSequence, now_timestamp
from libs.runtime.identity import current_caller
from libs.runtime.metrics import RuntimeMetrics
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import events_pb2, exception_pb2

DOMAIN = "exception"
OBJECT_TYPE = "exception"
RAISED = "raised"
CLEARED = "cleared"
CASE_ID_PREFIX = "EXC-"
# The exception router's transitions, each the last token of its event's subject (<ns>.exception.<id>.<name>);
# the control plane chains them into the audit trail.
TRANSITION_EVENTS = (
    "opened",
    "acknowledged",
    "resolved",
    "replay_requested",
    "replayed",
    "reopened",
    "escalated",
    "rerouted",
)


def severity(name: str | None, default: exception_pb2.Severity = exception_pb2.SEVERITY_HIGH) -> exception_pb2.Severity:
    """The contract's severity for a policy route's severity name (``low`` .. ``critical``); ``default`` if unset."""
    if not name:
        return default
    # protoc's .pyi types enum values as the enum class but Value() as a plain int; at run time both are ints.
    return cast(exception_pb2.Severity, exception_pb2.Severity.Value(f"SEVERITY_{name.upper()}"))


def case_id(type_name: str, object_type: str, object_key: str, fingerprint: str) -> str:
    """The exception (``EXC-…``) the exception router folds every raise with these four into."""
    digest = hashlib.sha256("\x1f".join((type_name, object_type, object_key, fingerprint)).encode()).hexdigest()
    return CASE_ID_PREFIX + digest[:24]


def fingerprint(exception_type: int, object_ref: types_pb2.ObjectRef, discriminator: str = "") -> str:
    """Same problem on the same object version -> same fingerprint, so repeats can be counted, not multiplied."""
    text = "|".join(
        (
            exception_pb2.ExceptionType.Name(exception_type),
            object_ref.object_type,
            object_ref.object_key,
            str(object_ref.version),
            discriminator,
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class ExceptionReporter:
    def __init__(self, publisher: EventPublisher, service_name: str, metrics: RuntimeMetrics | None = None) -> None:
        self._publisher = publisher
        self._service = service_name
        self.metrics = metrics  # what refusals count (duplicate transactions) on

    @property
    def component(self) -> str:
        """Who raises: the ``raised_by`` of every exception, and the subject its clearings go on."""
        return self._service

    async def raise_exception(
        self,
        exception_type: exception_pb2.ExceptionType,
        severity: exception_pb2.Severity,
        object_ref: types_pb2.ObjectRef,
        detail: str,
        *,
        evidence: Iterable[str] = (),
        original_message: exception_pb2.OriginalMessage | None = None,
        workflow_key: str = "",
        discriminator: str = "",
        policy_revision: int = 0,
        exception_id: str = "",
        site_id: str = "",
        business_unit: str = "",
    ) -> exception_pb2.Exception:
        """Publish one exception. An ``exception_id`` derived from what was found (rather than a fresh one) makes
        raising idempotent: the exception's subject guard stores it once however often it is raised again. The site
        and business unit concerned are what the router's policy routes by (``exceptions.routes[].match``)."""
        exception_id = exception_id or str(uuid.uuid4())
        exception = exception_pb2.Exception(
            exception_id=exception_id,
            type=exception_type,
            severity=severity,
            state=exception_pb2.EXCEPTION_STATE_OPEN,
            object=object_ref,
            raised_by=self._service,
            detail=detail,
            fingerprint=fingerprint(exception_type, object_ref, discriminator),
            occurrences=1,
            workflow_key=workflow_key,
            evidence=list(evidence),
            policy_revision=policy_revision,
            site_id=site_id,
            business_unit=business_unit,
        )
        exception.raised_at.CopyFrom(now_timestamp())
        if original_message is not None:
            exception.original_message.CopyFrom(original_message)
        # Raised before under this id (a repeated posting): stored once, and that one stands.
        with contextlib.suppress(WrongLastSequence):
            await self._publish(exception, workflow_key, policy_revision)
        return exception

    async def clear_exception(self, raised: exception_pb2.Exception, reason: str, *, clear_id: str) -> None:
        """Say the condition this component raised (``raised``: its type, object, fingerprint and the raise's id)
        no longer holds; the router resolves the exception (kind CLEARED) if that raise is still its newest.

        Published on ``<ns>.exception.<this component>.cleared``: the one subject of the exception stream the broker
        lets this component alone publish clearings on, so the router knows who cleared, not from a claim in the
        message. ``clear_id`` names what ended it (the stage that completed): a clearing repeated within the
        duplicate window is stored once, and one repeated later changes nothing (the exception is closed)."""
        exception = exception_pb2.Exception(
            exception_id=f"clear-{hashlib.sha256(clear_id.encode()).hexdigest()[:32]}",
            type=raised.type,
            object=raised.object,
            raised_by=self._service,
            fingerprint=raised.fingerprint,
            workflow_key=raised.workflow_key,
        )
        await self._publisher.publish(
            Event(
                domain=DOMAIN,
                object_type=OBJECT_TYPE,
                object_key=self._service,
                object_version=0,
                name=CLEARED,
                payload=events_pb2.ExceptionCleared(exception=exception, reason=reason, raise_id=raised.exception_id),
                idempotency_key=f"exception:{exception.exception_id}",
                source_system=self._service,
                workflow_key=raised.workflow_key,
            )
        )

    async def _publish(self, exception: exception_pb2.Exception, workflow_key: str, policy_revision: int) -> None:
        exception_id = exception.exception_id
        await self._publisher.publish(
            Event(
                domain=DOMAIN,
                object_type=OBJECT_TYPE,
                object_key=exception_id,
                object_version=1,
                name=RAISED,
                payload=events_pb2.ExceptionRaised(exception=exception),
                idempotency_key=f"exception:{exception_id}",
                source_system=current_caller().system,
                workflow_key=workflow_key,
                policy_revision=policy_revision,
            ),
            expected_last_sequence=0,
        )
