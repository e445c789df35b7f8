"""Between the contract and the router: what a request asks for (validated), what an exception looks like."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from libs.runtime.errors import FieldViolation, InvalidArgument
from libs.runtime.exception_reporter import fingerprint
from libs.runtime.subjects import Namespace
from services.exception_router import events
from services.exception_router.decider import Resolution, State
from services.exception_router.store import CaseView
from syncgov.exception.v1 import exception_pb2, exception_service_pb2

# GetException's answer must fit gRPC's 4 MiB whatever the raise held (services attach whole documents as evidence,
# and a hand-off carries a message of up to 8 MiB): beyond these, evidence and the message's bytes stay in the stream.
ANSWER_EVIDENCE_BYTES = 1024 * 1024
ANSWER_MESSAGE_BYTES = 1024 * 1024


def raised_from_request(request: exception_service_pb2.RaiseExceptionRequest, system: str) -> exception_pb2.Exception:
    """The raise an outside system asks for, completed (raiser, fingerprint, state), or INVALID_ARGUMENT."""
    given = request.exception
    violations: list[FieldViolation] = []
    if not request.HasField("exception"):
        violations.append(FieldViolation("exception", "is required"))
    if given.type == exception_pb2.EXCEPTION_TYPE_UNSPECIFIED:
        violations.append(FieldViolation("exception.type", "is required"))
    if not given.object.object_type.strip():
        violations.append(FieldViolation("exception.object.object_type", "is required: what the problem concerns"))
    if not given.object.object_key.strip():
        violations.append(FieldViolation("exception.object.object_key", "is required: which one"))
    if not given.detail.strip():
        violations.append(FieldViolation("exception.detail", "is required: say what is wrong"))
    if given.HasField("original_message"):
        violations.append(
            FieldViolation(
                "exception.original_message",
                "only syncgov's own consumers hand off messages to replay; describe the problem in detail/evidence",
            )
        )
    if given.type == exception_pb2.EXCEPTION_TYPE_DELIVERY_EXHAUSTED:
        violations.append(
            FieldViolation(
                "exception.type",
                "delivery_exhausted is raised by syncgov's consumers and JetStream's advisories, not through the API",
            )
        )
    for index, document in enumerate(given.evidence):
        try:
            json.loads(document)
        except ValueError:
            violations.append(FieldViolation(f"exception.evidence[{index}]", "must be a JSON document"))
    if violations:
        raise InvalidArgument(
            f"the exception cannot be raised: {violations[0].field} {violations[0].description}; nothing was recorded",
            violations=violations,
            reason="INVALID_EXCEPTION",
        )
    raised = exception_pb2.Exception()
    raised.CopyFrom(given)
    # What the router assigns, whatever the caller sent: who raised it, its state, owner and count.
    for assigned in ("owner_team", "policy_revision", "rule_path", "acknowledgment", "resolution", "escalation"):
        raised.ClearField(assigned)
    for assigned in ("replay", "reopened", "last_raised_id", "raised_at", "last_seen_at"):
        raised.ClearField(assigned)
    raised.raised_by = system
    raised.state = exception_pb2.EXCEPTION_STATE_OPEN
    raised.occurrences = 1
    if not raised.fingerprint:
        raised.fingerprint = fingerprint(raised.type, raised.object)
    return raised


def add_evidence(message: exception_pb2.Exception, documents: Sequence[str]) -> None:
    """As much evidence as fits the answer, first documents first; ``evidence_omitted`` counts the rest."""
    room = ANSWER_EVIDENCE_BYTES
    for index, document in enumerate(documents):
        size = len(document.encode())
        if size > room:
            message.evidence_omitted = len(documents) - index
            return
        room -= size
        message.evidence.append(document)


def add_original(message: exception_pb2.Exception, original: exception_pb2.OriginalMessage) -> None:
    """The original message, its bytes left out above ``ANSWER_MESSAGE_BYTES`` (``data_bytes`` says how many)."""
    message.original_message.CopyFrom(original)
    message.original_message.data_bytes = len(original.data)
    if len(original.data) > ANSWER_MESSAGE_BYTES:
        message.original_message.ClearField("data")


def unreplayable(original: exception_pb2.OriginalMessage | None, namespace: Namespace) -> str:
    """Why ``original`` cannot go back to its consumer, or "" when it can: it must be kept whole and its consumer one
    that a syncgov service runs (its replay consumer delivers it)."""
    if original is None or not original.subject:
        return "no message is kept with this exception (it was gone from its stream when the limit was reached)"
    if not original.consumer.startswith(f"{namespace.root}-") or original.consumer.endswith("-replays"):
        return (
            f"its consumer {original.consumer!r} is not one a syncgov service runs, so nothing would take the message; "
            "replay it by that consumer's own means, then resolve the exception"
        )
    return ""


def raise_id(system: str, idempotency_key: str) -> str:
    """The raise's id: derived from the caller's key (a retry is the same raise), else new."""
    digest = hashlib.sha256(f"{system}\x1f{idempotency_key}".encode()).hexdigest()
    return f"raise-{digest[:32]}"


RESOLUTIONS = {
    exception_pb2.RESOLUTION_KIND_FIXED: Resolution.FIXED,
    exception_pb2.RESOLUTION_KIND_ACCEPTED: Resolution.ACCEPTED,
    exception_pb2.RESOLUTION_KIND_FALSE_POSITIVE: Resolution.FALSE_POSITIVE,
    exception_pb2.RESOLUTION_KIND_DUPLICATE: Resolution.DUPLICATE,
    exception_pb2.RESOLUTION_KIND_WONT_FIX: Resolution.WONT_FIX,
}


def resolution(kind: int, note: str) -> tuple[Resolution, str]:
    violations = []
    chosen = RESOLUTIONS.get(kind)  # type: ignore[call-overload]
    if chosen is None:
        violations.append(
            FieldViolation(
                "kind",
                "is required: fixed, accepted, false_positive, duplicate or wont_fix (a replay "
                "closes an exception by itself)",
            )
        )
    if not note.strip():
        violations.append(FieldViolation("resolution", "is required: say how it was resolved"))
    if violations or chosen is None:
        raise InvalidArgument(
            f"{violations[0].field} {violations[0].description}; nothing was recorded",
            violations=violations,
            reason="INVALID_RESOLUTION",
        )
    return chosen, note.strip()


def required_text(value: str, field: str, why: str) -> str:
    if not value.strip():
        raise InvalidArgument(
            f"{field} is required: {why}; nothing was recorded",
            violations=[FieldViolation(field, "is required")],
            reason=f"{field.upper()}_REQUIRED",
        )
    return value.strip()


def exception_of(view: CaseView) -> exception_pb2.Exception:
    """The exception as the contract shows it, from the book (evidence and original message are added by Get)."""
    state = view.state
    message = exception_pb2.Exception(
        exception_id=view.case_id,
        type=events.type_value(view.type_name or "unspecified"),
        severity=events.severity_value(state.severity or view.raised_severity),
        state=events.state_value(state.state),
        owner_team=state.owner_team,
        raised_by=view.raised_by,
        detail=view.detail,
        fingerprint=view.fingerprint,
        occurrences=min(view.occurrences, 2**31 - 1),
        site_id=view.site_id,
        business_unit=view.business_unit,
        workflow_key=view.workflow_key,
        policy_revision=state.route.revision if state.route else 0,
        rule_path=state.route.rule_path if state.route else "",
        reopened=state.reopened,
        last_raised_id=view.last_raised_id,
    )
    message.object.object_type = view.object_type
    message.object.object_key = view.object_key
    message.object.version = view.object_version
    if view.first_raised_at_ns:
        message.raised_at.FromNanoseconds(view.first_raised_at_ns)
    if view.last_raised_at_ns:
        message.last_seen_at.FromNanoseconds(view.last_raised_at_ns)
    if state.acknowledged_by:
        message.acknowledgment.by = state.acknowledged_by
        message.acknowledgment.through = state.acknowledged_through
        message.acknowledgment.at.FromNanoseconds(state.acknowledged_at_ns)
    if state.state.closed:
        message.resolution.kind = events.resolution_value(state.resolution)
        message.resolution.note = state.note
        message.resolution.by = state.resolved_by
        message.resolution.through = state.resolved_through
        message.resolution.at.FromNanoseconds(state.closed_at_ns)
    route = state.route
    if route is not None and (route.escalate_after_ns or state.escalated):
        escalation = message.escalation
        escalation.escalate_to = route.escalate_to
        escalation.escalated = state.escalated
        if state.escalate_at_ns:
            escalation.due_at.FromNanoseconds(state.escalate_at_ns)
        if state.escalated:
            escalation.escalated_at.FromNanoseconds(state.escalated_at_ns)
            escalation.escalated_from = state.escalated_from
    if state.replay_sequence:
        replay = message.replay
        replay.requested_by = state.replay_by
        replay.reason = state.replay_reason
        replay.requested_at.FromNanoseconds(state.replay_at_ns)
        replay.stream_sequence = state.replay_sequence
        replay.consumer = state.replay_consumer
        if state.replay_processed_at_ns:
            replay.processed_at.FromNanoseconds(state.replay_processed_at_ns)
    return message


@dataclass(frozen=True, slots=True)
class ListFilter:
    owner_team: str = ""
    type_name: str = ""
    state: State | None = None
    severity: str = ""
    raised_before_ns: int = 0
    raised_after_ns: int = 0
    object_type: str = ""
    object_key: str = ""
    unresolved_only: bool = False
    escalated_only: bool = False

    def admits(self, view: CaseView) -> bool:
        state = view.state
        if self.state is not None:
            if state.state is not self.state and not (self.state is State.OPEN and state.state is State.NONE):
                return False
        elif self.unresolved_only and state.state.closed:
            return False
        return not (
            (self.owner_team and state.owner_team != self.owner_team)
            or (self.type_name and view.type_name != self.type_name)
            or (self.severity and (state.severity or view.raised_severity) != self.severity)
            or (self.raised_before_ns and view.first_raised_at_ns >= self.raised_before_ns)
            or (self.raised_after_ns and view.first_raised_at_ns < self.raised_after_ns)
            or (self.object_type and view.object_type != self.object_type)
            or (self.object_key and view.object_key != self.object_key)
            or (self.escalated_only and not state.escalated)
        )


def list_filter(request: exception_service_pb2.ListExceptionsRequest) -> ListFilter:
    return ListFilter(
        owner_team=request.owner_team,
        type_name=events.type_name(request.type) if request.type else "",
        state=events.state_of(request.state),
        severity=events.severity_name(request.severity),
        raised_before_ns=request.raised_before.ToNanoseconds() if request.HasField("raised_before") else 0,
        raised_after_ns=request.raised_after.ToNanoseconds() if request.HasField("raised_after") else 0,
        object_type=request.object.object_type,
        object_key=request.object.object_key,
        unresolved_only=request.unresolved_only,
        escalated_only=request.escalated_only,
    )
