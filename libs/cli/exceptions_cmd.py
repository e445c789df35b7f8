"""``syncgov exceptions list|show|ack|resolve|replay|summary``: the exception backlog and a person's handling of it.

Every text an exception carries comes from other systems (details, evidence, headers, the last error of a consumer):
it is printed with rich markup escaped and control characters shown as escapes, and an original message's bytes are
never printed, only their size (``--json`` gives them base64, as protobuf's JSON mapping does).
"""

from __future__ import annotations

import asyncio
import json
import unicodedata
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, cast

import grpc
import typer
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message
from rich.markup import escape
from rich.table import Table

from libs.cli.client import (
    EXIT_NO,
    EXIT_OK,
    EXIT_UNREACHABLE,
    Connection,
    collect_pages,
    connection_options,
    explain_rpc_error,
    right_refused,
    stub,
)
from libs.cli.client import older_than as raised_before
from libs.cli.components import COMPONENTS, DEFAULT_GRPC_PORT_BASE
from libs.cli.invoices_cmd import age_text
from libs.cli.output import make_console, table
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import exception_pb2, exception_service_pb2, exception_service_pb2_grpc

app = typer.Typer(
    help="Exceptions: the backlog by owner, one exception whole, a person's acknowledgment, resolution or replay.",
    no_args_is_help=True,
)
console = make_console()

PEER = "exception-router"
ADDRESS = f"127.0.0.1:{next(c for c in COMPONENTS if c.name == PEER).grpc_port(DEFAULT_GRPC_PORT_BASE)}"
ADDRESS_ENVVAR = "SYNCGOV_EXCEPTION_ADDR"
NONE = "-"
REPLAYABLE = "delivery_exhausted"


def _names(enum: Any, prefix: str, skip: Iterable[int] = (0,)) -> tuple[str, ...]:
    return tuple(v.name.removeprefix(prefix).lower() for v in enum.DESCRIPTOR.values if v.number not in skip)


TYPES = _names(exception_pb2.ExceptionType, "EXCEPTION_TYPE_")
STATES = _names(exception_pb2.ExceptionState, "EXCEPTION_STATE_")
SEVERITIES = _names(exception_pb2.Severity, "SEVERITY_")
# What a person may close an exception as; "replayed" is what a processed replay closes it as, by itself.
KINDS = _names(
    exception_pb2.ResolutionKind,
    "RESOLUTION_KIND_",
    skip=(0, exception_pb2.RESOLUTION_KIND_REPLAYED, exception_pb2.RESOLUTION_KIND_CLEARED),
)


def _enum_name(enum: Any, prefix: str, value: int) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def exception_type(value: int) -> str:
    """``EXCEPTION_TYPE_OVER_RECEIPT`` -> ``over_receipt``, as the policy's routes name it."""
    return _enum_name(exception_pb2.ExceptionType, "EXCEPTION_TYPE_", value)


def state_name(value: int) -> str:
    """``EXCEPTION_STATE_ACKNOWLEDGED`` -> ``acknowledged``."""
    return _enum_name(exception_pb2.ExceptionState, "EXCEPTION_STATE_", value)


def severity_name(value: int) -> str:
    """``SEVERITY_HIGH`` -> ``high``; unset: ``-``."""
    return _enum_name(exception_pb2.Severity, "SEVERITY_", value) if value else NONE


def kind_name(value: int) -> str:
    """``RESOLUTION_KIND_WONT_FIX`` -> ``wont_fix``."""
    return _enum_name(exception_pb2.ResolutionKind, "RESOLUTION_KIND_", value)


def _choice(enum: Any, prefix: str, name: str | None, choices: tuple[str, ...], hint: str) -> int:
    """``over_receipt`` -> its contract value; none: 0 (any); a name not in ``choices`` is a usage error (exit 2)."""
    if not name:
        return 0
    wanted = name.strip().lower()
    if wanted not in choices:
        raise typer.BadParameter(f"{name!r} is not one of {', '.join(choices)}", param_hint=hint)
    return int(enum.Value(f"{prefix}{wanted.upper()}"))


def shown(text: str) -> str:
    """Text another system wrote, safe for a terminal: rich markup escaped, control and format characters (an
    escape sequence, a bidi override) shown as escapes instead of acted on; line breaks kept."""
    cleaned = "".join(
        char.encode("unicode_escape").decode() if char != "\n" and unicodedata.category(char).startswith("C") else char
        for char in text
    )
    return escape(cleaned)


def _when(stamp: timestamp_pb2.Timestamp) -> str:
    return stamp.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def since(stamp: timestamp_pb2.Timestamp, now: datetime) -> str:
    """``2027-01-20T10:00:00Z (3h 5m)``: when and how long ago."""
    return f"{_when(stamp)} ({age_text(now - stamp.ToDatetime(tzinfo=UTC))})"


def duration_text(seconds: float) -> str:
    """A closure time to the two largest units: ``2.4s``, ``1m 15s``, ``3h 5m``, ``2d 4h``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return " ".join(parts[:2])


def object_text(ref: types_pb2.ObjectRef) -> str:
    """``purchase_order:PO-1001``, the form ``--object`` takes."""
    return f"{ref.object_type}:{ref.object_key}"


def _state_text(exception: exception_pb2.Exception) -> str:
    text = state_name(exception.state)
    pending = exception.HasField("replay") and not exception.replay.HasField("processed_at")
    if pending and exception.state in (exception_pb2.EXCEPTION_STATE_OPEN, exception_pb2.EXCEPTION_STATE_ACKNOWLEDGED):
        text += " (replay pending)"
    return text


def _escalated(exception: exception_pb2.Exception) -> str:
    escalation = exception.escalation
    if not escalation.escalated:
        return NONE
    return f"yes (from {shown(escalation.escalated_from)})" if escalation.escalated_from else "yes"


def exceptions_table(title: str, exceptions: Iterable[exception_pb2.Exception], now: datetime) -> Table:
    """One row per exception: what, how urgent, where it stands, who owns it, about what, how often, since when."""
    result = table(
        title,
        "exception",
        "type",
        "severity",
        "state",
        "owner team",
        "object",
        "occurrences",
        "first raised (age)",
        "escalated",
    )
    for exception in exceptions:
        result.add_row(
            shown(exception.exception_id),
            exception_type(exception.type),
            severity_name(exception.severity),
            _state_text(exception),
            shown(exception.owner_team) or NONE,
            shown(object_text(exception.object)),
            str(exception.occurrences),
            since(exception.raised_at, now) if exception.HasField("raised_at") else NONE,
            _escalated(exception),
        )
    return result


def _acknowledgment(exception: exception_pb2.Exception) -> str:
    if not exception.HasField("acknowledgment"):
        return NONE
    ack = exception.acknowledgment
    return shown(f"by {ack.by} through {ack.through or '?'} at {_when(ack.at)}")


def _resolution(exception: exception_pb2.Exception) -> str:
    if not exception.HasField("resolution"):
        return NONE
    done = exception.resolution
    through = f" through {done.through}" if done.through else ""
    return shown(f"{kind_name(done.kind)} by {done.by or '?'}{through} at {_when(done.at)}: {done.note}")


def _escalation(exception: exception_pb2.Exception, now: datetime) -> str:
    if not exception.HasField("escalation"):
        return "never (the route sets no deadline)"
    escalation = exception.escalation
    if escalation.escalated:
        return shown(
            f"escalated at {_when(escalation.escalated_at)} from {escalation.escalated_from or '?'} "
            f"to {exception.owner_team}"
        )
    closed = exception.state in (exception_pb2.EXCEPTION_STATE_RESOLVED, exception_pb2.EXCEPTION_STATE_REPLAYED)
    if closed:
        return "none: closed before its deadline"
    if not escalation.HasField("due_at"):
        return "no deadline running"
    due = escalation.due_at.ToDatetime(tzinfo=UTC)
    when = f"in {age_text(due - now)}" if due > now else "overdue"
    target = f"to {escalation.escalate_to}" if escalation.escalate_to else "marked escalated, staying with its owner"
    return shown(f"due {_when(escalation.due_at)} ({when}), {target}")


def _replay(exception: exception_pb2.Exception) -> str:
    if not exception.HasField("replay"):
        return NONE
    replay = exception.replay
    outcome = f"processed at {_when(replay.processed_at)}" if replay.HasField("processed_at") else "pending"
    return shown(
        f"requested by {replay.requested_by} at {_when(replay.requested_at)}: {replay.reason}\n"
        f"stream sequence {replay.stream_sequence}, to consumer {replay.consumer or '?'}; {outcome}"
    )


def show_table(exception: exception_pb2.Exception, now: datetime) -> Table:
    """Everything about one exception, one row a fact; an original message by its place and size, never its bytes."""
    result = table(shown(f"exception {exception.exception_id}"), "", "")
    result.show_header = False
    rows: list[tuple[str, str]] = [
        ("type", exception_type(exception.type)),
        ("state", _state_text(exception) + (f", reopened {exception.reopened} time(s)" if exception.reopened else "")),
        ("severity", severity_name(exception.severity)),
        ("owner team", shown(exception.owner_team) or NONE),
        (
            "routed by",
            shown(f"{exception.rule_path or 'the default team'} of policy revision {exception.policy_revision}"),
        ),
        (
            "object",
            shown(object_text(exception.object))
            + (f" (version {exception.object.version})" if exception.object.version else ""),
        ),
    ]
    for label, value in (
        ("site", exception.site_id),
        ("business unit", exception.business_unit),
        ("workflow", exception.workflow_key),
    ):
        if value:
            rows.append((label, shown(value)))
    rows += [
        ("raised by", shown(exception.raised_by) or NONE),
        ("occurrences", str(exception.occurrences)),
        ("first raised", since(exception.raised_at, now) if exception.HasField("raised_at") else NONE),
        ("last raised", since(exception.last_seen_at, now) if exception.HasField("last_seen_at") else NONE),
        ("newest raise id", shown(exception.last_raised_id) or NONE),
        ("fingerprint", shown(exception.fingerprint) or NONE),
        ("detail", shown(exception.detail) or NONE),
        ("acknowledged", _acknowledgment(exception)),
        ("resolved", _resolution(exception)),
        ("escalation", _escalation(exception, now)),
        ("replay", _replay(exception)),
    ]
    if exception.HasField("original_message"):
        original = exception.original_message
        rows += [
            ("original message", shown(f"{original.subject or '(subject unknown)'}; {len(original.data)} bytes")),
            ("  stream", shown(f"{original.stream or '?'} sequence {original.stream_sequence}")),
            ("  consumer", shown(f"{original.consumer or '?'}, {original.deliveries} deliveries")),
            ("  last error", shown(original.last_error) or NONE),
            ("  headers", "\n".join(shown(f"{name}: {value}") for name, value in sorted(original.headers.items()))),
        ]
    for number, document in enumerate(exception.evidence, start=1):
        rows.append((f"evidence {number}", shown(document)))
    for label, value in rows:
        result.add_row(label, value or NONE)
    return result


def backlog_table(answer: exception_service_pb2.SummarizeExceptionsResponse, team: str, now: datetime) -> Table:
    """The backlog (open and acknowledged) by team and type, largest first."""
    rows = list(answer.backlog)
    totals = (sum(r.open for r in rows), sum(r.acknowledged for r in rows), sum(r.escalated for r in rows))
    result = table(
        f"backlog{f' of {shown(team)}' if team else ''}: {totals[0]} open, {totals[1]} acknowledged, "
        f"{totals[2]} escalated",
        "owner team",
        "type",
        "open",
        "acknowledged",
        "escalated",
        "occurrences",
        "oldest raised (age)",
    )
    for row in rows:
        result.add_row(
            shown(row.owner_team) or NONE,
            exception_type(row.type),
            str(row.open),
            str(row.acknowledged),
            str(row.escalated),
            str(row.occurrences),
            since(row.oldest_raised_at, now) if row.HasField("oldest_raised_at") else NONE,
        )
    return result


def closure_table(answer: exception_service_pb2.SummarizeExceptionsResponse, team: str) -> Table:
    """Percentiles of the time from first raise to closure: every team together, then each (the team that closed)."""
    result = table("closure times (first raise to closure, last 30 days)", "team", "closed", "p50", "p90", "p99")

    def add(name: str, times: exception_service_pb2.ClosureTimes) -> None:
        figures = (
            [duration_text(s) for s in (times.p50_seconds, times.p90_seconds, times.p99_seconds)]
            if times.closed
            else [NONE] * 3
        )
        result.add_row(name, str(times.closed), *figures)

    add(shown(team) if team else "all teams", answer.closure)
    if not team:
        for name in sorted(answer.closure_by_team):
            add(shown(name), answer.closure_by_team[name])
    return result


def as_json(message: Message) -> dict[str, Any]:
    """A message as protobuf's JSON mapping gives it, with the contract's field names (``exception_id``)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


# -- calls -------------------------------------------------------------------------------------------------------


async def _call(connection: Connection, method: str, request: Message) -> Any:
    async with connection.channel() as channel:
        router = stub(exception_service_pb2_grpc.ExceptionRouterServiceStub, channel)
        return await getattr(router, method)(request, metadata=connection.metadata(), timeout=15)


HANDLING = {"AcknowledgeException": "acknowledged", "ResolveException": "resolved", "ReplayException": "replayed"}


def _attempt(connection: Connection, method: str, request: Message) -> tuple[Any, grpc.aio.AioRpcError | None]:
    """The answer of one call, or the error it failed with."""
    try:
        return asyncio.run(_call(connection, method, request)), None
    except grpc.aio.AioRpcError as error:
        return None, error


def _failure(error: grpc.aio.AioRpcError, connection: Connection, method: str) -> tuple[list[str], int]:
    """A failed call in words (code: details, then why when the policy refused it) and its exit code."""
    message, code = explain_rpc_error(error, f"{PEER} at {connection.address}")
    lines = [message]
    if error.code() == grpc.StatusCode.PERMISSION_DENIED and method in HANDLING:
        lines.append(
            right_refused(
                error,
                connection.system or "",
                done=HANDLING[method],
                right="exception_handling",
                verb="act",
                hint="--system, by default ops-console",
            )
        )
    return lines, code


def _run(connection: Connection, method: str, request: Message) -> Any:
    """The answer of one call; a failure is one line (code: details), an explanation when useful, and the exit."""
    answer, error = _attempt(connection, method, request)
    if error is not None:
        lines, code = _failure(error, connection, method)
        for line in lines:
            console.print(f"[red]{shown(line)}[/red]")
        raise typer.Exit(code)
    return answer


def _required(value: str, hint: str) -> str:
    if not value.strip():
        raise typer.BadParameter("is required", param_hint=hint)
    return value.strip()


# -- filters -----------------------------------------------------------------------------------------------------

TeamOption = Annotated[str, typer.Option("--team", help="Only exceptions this team owns.")]
TypeOption = Annotated[str | None, typer.Option("--type", help=f"Only this type: {', '.join(TYPES)}.")]
SeverityOption = Annotated[str | None, typer.Option(help=f"Only this severity: {', '.join(SEVERITIES)}.")]
OlderThanOption = Annotated[
    str | None, typer.Option(help="Only exceptions first raised at least this long ago (e.g. 4h, 7d).")
]
ObjectOption = Annotated[
    str | None,
    typer.Option("--object", metavar="TYPE:KEY", help="Only exceptions about this object (e.g. invoice:INV-1001)."),
]
EscalatedOption = Annotated[bool, typer.Option("--escalated", help="Only escalated ones.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (protobuf's JSON mapping) for scripts.")]


def _object(value: str | None) -> types_pb2.ObjectRef | None:
    """``invoice:INV-1001`` -> the object (type and key; the key may hold colons); a bad one is exit 2."""
    if not value:
        return None
    object_type, colon, key = value.strip().partition(":")
    if not colon or not object_type.strip() or not key.strip():
        raise typer.BadParameter(f"{value!r} is not TYPE:KEY (e.g. purchase_order:PO-1001)", param_hint="--object")
    return types_pb2.ObjectRef(object_type=object_type.strip(), object_key=key.strip())


def _listing(
    team: str,
    type_: str | None,
    state: str | None,
    severity: str | None,
    older_than: str | None,
    object_: str | None,
    unresolved: bool,
    escalated: bool,
    now: datetime,
) -> tuple[exception_service_pb2.ListExceptionsRequest, str]:
    """The listing the filters ask for, and the filters in words (for a title)."""
    request = exception_service_pb2.ListExceptionsRequest(
        owner_team=team.strip(),
        type=cast(
            exception_pb2.ExceptionType, _choice(exception_pb2.ExceptionType, "EXCEPTION_TYPE_", type_, TYPES, "--type")
        ),
        state=cast(
            exception_pb2.ExceptionState,
            _choice(exception_pb2.ExceptionState, "EXCEPTION_STATE_", state, STATES, "--state"),
        ),
        severity=cast(
            exception_pb2.Severity, _choice(exception_pb2.Severity, "SEVERITY_", severity, SEVERITIES, "--severity")
        ),
        unresolved_only=unresolved,
        escalated_only=escalated,
    )
    ref = _object(object_)
    if ref is not None:
        request.object.CopyFrom(ref)
    before = raised_before(older_than, now)
    if before is not None:
        request.raised_before.CopyFrom(before)
    where = ", ".join(
        part
        for part in (
            f"team {team.strip()}" if team.strip() else "",
            f"type {type_.strip().lower()}" if type_ else "",
            f"state {state.strip().lower()}" if state else "",
            f"severity {severity.strip().lower()}" if severity else "",
            f"about {object_text(ref)}" if ref is not None else "",
            "unresolved" if unresolved and not state else "",
            "escalated" if escalated else "",
            f"first raised {older_than} ago or earlier" if older_than else "",
        )
        if part
    )
    return request, where


def _collect(
    connection: Connection, request: exception_service_pb2.ListExceptionsRequest, limit: int
) -> tuple[list[exception_pb2.Exception], str]:
    if limit < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--limit")
    fetch = lambda page: _run(connection, "ListExceptions", page)  # noqa: E731 - one page of the listing
    return collect_pages(fetch, request, "exceptions", limit)


# -- commands ----------------------------------------------------------------------------------------------------


@app.command(name="list")
@connection_options(address=ADDRESS, address_envvar=ADDRESS_ENVVAR, peer=PEER)
def list_exceptions(
    team: TeamOption = "",
    type_: TypeOption = None,
    state: Annotated[str | None, typer.Option(help=f"Only this state: {', '.join(STATES)}.")] = None,
    severity: SeverityOption = None,
    older_than: OlderThanOption = None,
    object_: ObjectOption = None,
    open_: Annotated[
        bool, typer.Option("--open", help="Only unresolved ones (open or acknowledged): the backlog.")
    ] = False,
    escalated: EscalatedOption = False,
    limit: Annotated[int, typer.Option(help="How many exceptions at most, oldest first.")] = 50,
    json_: JsonOption = False,
    *,
    connection: Connection,
) -> None:
    """Exceptions, oldest first, by owner team, type, state, severity, age and object.

    Exit 0 with the list (empty too), 1 when the call is refused, 2 on usage, 3 when exception-router cannot be
    reached. ``--json`` prints one JSON array of exceptions.
    """
    if open_ and state and state.strip().lower() in ("resolved", "replayed"):
        raise typer.BadParameter(f"--open lists unresolved exceptions, never {state} ones", param_hint="--state")
    now = datetime.now(UTC)
    request, where = _listing(team, type_, state, severity, older_than, object_, open_, escalated, now)
    listed, token = _collect(connection, request, limit)
    if json_:
        _print_json([as_json(exception) for exception in listed])
        raise typer.Exit(EXIT_OK)
    title = f"{len(listed)} exception(s){f' ({where})' if where else ''}{', more exist' if token else ''}"
    console.print(exceptions_table(title, listed, now))
    raise typer.Exit(EXIT_OK)


@app.command()
@connection_options(address=ADDRESS, address_envvar=ADDRESS_ENVVAR, peer=PEER)
def show(
    exception_id: Annotated[
        str, typer.Argument(metavar="EXCEPTION-ID", help="An exception's id, or the id of any raise folded into it.")
    ],
    json_: JsonOption = False,
    *,
    connection: Connection,
) -> None:
    """Everything about one exception: routing, acknowledgment, resolution, escalation, replay, evidence, and the
    original message of a delivery problem (its place and size; ``--json`` has its bytes, base64).

    Exit 0 with the exception, 1 when there is no such exception (NOT_FOUND) or the call is refused, 3 when
    exception-router cannot be reached.
    """
    answer = _run(connection, "GetException", exception_service_pb2.GetExceptionRequest(exception_id=exception_id))
    if json_:
        _print_json(as_json(answer.exception))
    else:
        console.print(show_table(answer.exception, datetime.now(UTC)))
    raise typer.Exit(EXIT_OK)


PersonOption = Annotated[str, typer.Option(metavar="USER-ID", help="The person acting (a user id; audited).")]
IdArgument = Annotated[str, typer.Argument(metavar="EXCEPTION-ID", help="Exception id (or a raise's id).")]


@app.command()
@connection_options(address=ADDRESS, address_envvar=ADDRESS_ENVVAR, peer=PEER)
def ack(exception_id: IdArgument, person: PersonOption, *, connection: Connection) -> None:
    """Acknowledge an exception: a person takes it, through the system acted as (it needs exception_handling).

    Exit 0 with the new state; 1 when the exception is unknown, closed or taken by someone else
    (FAILED_PRECONDITION) or the system may not handle exceptions (PERMISSION_DENIED); 2 on usage; 3 when
    exception-router cannot be reached.
    """
    request = exception_service_pb2.AcknowledgeExceptionRequest(
        exception_id=exception_id, acknowledged_by=_required(person, "--person")
    )
    exception = _run(connection, "AcknowledgeException", request).exception
    console.print(shown(f"{exception.exception_id}: {_state_text(exception)}"))
    if exception.HasField("acknowledgment"):
        console.print(f"acknowledged {_acknowledgment(exception)}")
    raise typer.Exit(EXIT_OK)


@app.command()
@connection_options(address=ADDRESS, address_envvar=ADDRESS_ENVVAR, peer=PEER)
def resolve(
    exception_id: IdArgument,
    kind: Annotated[str, typer.Option(help=f"How it was resolved: {', '.join(KINDS)}.")],
    note: Annotated[str, typer.Option(help="What was done or decided (audited).")],
    person: PersonOption,
    *,
    connection: Connection,
) -> None:
    """Resolve an exception: a person closes it with a kind and a note, through the system acted as.

    Exit 0 with the new state; 1 when the exception is unknown or closed otherwise already (FAILED_PRECONDITION)
    or the system may not handle exceptions (PERMISSION_DENIED); 2 on usage (a kind not listed); 3 when
    exception-router cannot be reached.
    """
    value = _choice(exception_pb2.ResolutionKind, "RESOLUTION_KIND_", kind, KINDS, "--kind")
    request = exception_service_pb2.ResolveExceptionRequest(
        exception_id=exception_id,
        kind=cast(exception_pb2.ResolutionKind, value),
        resolution=_required(note, "--note"),
        resolved_by=_required(person, "--person"),
    )
    exception = _run(connection, "ResolveException", request).exception
    console.print(shown(f"{exception.exception_id}: {_state_text(exception)}"))
    if exception.HasField("resolution"):
        console.print(f"resolved {_resolution(exception)}")
    raise typer.Exit(EXIT_OK)


def _replayed_text(
    listed: exception_pb2.Exception | None, answer: exception_service_pb2.ReplayExceptionResponse
) -> str:
    """One replay's outcome: requested now, requested before (one replay however often pressed), or done."""
    exception = answer.exception
    consumer = exception.replay.consumer or "its consumer"
    if listed is not None and listed.HasField("replay") and listed.replay.stream_sequence == answer.stream_sequence:
        return (
            f"{exception.exception_id}: a replay was requested already (stream sequence {answer.stream_sequence}, "
            f"to {consumer}); nothing is delivered twice"
        )
    if exception.state == exception_pb2.EXCEPTION_STATE_REPLAYED:
        return f"{exception.exception_id}: replayed already (stream sequence {answer.stream_sequence})"
    return (
        f"{exception.exception_id}: replay requested (stream sequence {answer.stream_sequence}, to {consumer}); "
        f"it closes once the consumer has processed the message"
    )


@app.command()
@connection_options(address=ADDRESS, address_envvar=ADDRESS_ENVVAR, peer=PEER)
def replay(
    reason: Annotated[str, typer.Option(help="What was fixed before the replay (audited).")],
    person: PersonOption,
    exception_id: Annotated[
        str | None,
        typer.Argument(metavar="EXCEPTION-ID", help="The delivery_exhausted exception; or use --all-matching."),
    ] = None,
    all_matching: Annotated[
        bool,
        typer.Option("--all-matching", help="Replay every unresolved delivery_exhausted exception the filters match."),
    ] = False,
    team: TeamOption = "",
    type_: Annotated[
        str | None, typer.Option("--type", help=f"With --all-matching: {REPLAYABLE} (the only replayable type).")
    ] = None,
    state: Annotated[str | None, typer.Option(help="With --all-matching: open or acknowledged.")] = None,
    severity: SeverityOption = None,
    older_than: OlderThanOption = None,
    object_: ObjectOption = None,
    escalated: EscalatedOption = False,
    limit: Annotated[int, typer.Option(help="With --all-matching: how many exceptions at most, oldest first.")] = 50,
    yes: Annotated[bool, typer.Option("--yes", help="With --all-matching: do not ask before replaying.")] = False,
    *,
    connection: Connection,
) -> None:
    """Deliver a delivery_exhausted exception's original message again to the consumer that gave up on it, once a
    person fixed the cause; the exception closes when the consumer has processed it. With --all-matching, every
    unresolved delivery_exhausted exception the filters match, one by one (a refusal of one does not stop the
    others); it asks first unless --yes.

    Exit 0 when every replay was requested; 1 when one was refused (unknown, closed, not replayable,
    PERMISSION_DENIED) or the confirmation was declined; 2 on usage; 3 when exception-router cannot be reached.
    """
    reason, person = _required(reason, "--reason"), _required(person, "--person")
    filters = any((team, type_, state, severity, older_than, object_, escalated, yes))
    if all_matching == bool(exception_id):
        raise typer.BadParameter("name one EXCEPTION-ID or use --all-matching with filters", param_hint="EXCEPTION-ID")
    if exception_id:
        if filters:
            raise typer.BadParameter("filters and --yes go with --all-matching only", param_hint="--all-matching")
        single = exception_service_pb2.ReplayExceptionRequest(
            exception_id=exception_id, reason=reason, replayed_by=person
        )
        console.print(shown(_replayed_text(None, _run(connection, "ReplayException", single))))
        raise typer.Exit(EXIT_OK)
    if type_ and type_.strip().lower() != REPLAYABLE:
        raise typer.BadParameter(
            f"only {REPLAYABLE} exceptions carry a message to replay, not {type_}", param_hint="--type"
        )
    if state and state.strip().lower() not in ("open", "acknowledged"):
        raise typer.BadParameter("only unresolved exceptions are replayed: open or acknowledged", param_hint="--state")
    now = datetime.now(UTC)
    request, where = _listing(team, REPLAYABLE, state, severity, older_than, object_, True, escalated, now)
    raise typer.Exit(_replay_matching(connection, request, where, limit, reason, person, yes, now))


def _replay_matching(
    connection: Connection,
    request: exception_service_pb2.ListExceptionsRequest,
    where: str,
    limit: int,
    reason: str,
    person: str,
    yes: bool,
    now: datetime,
) -> int:
    """List what the filters match, ask (unless ``yes``), replay each in turn whatever happened to the one before;
    the exit code: 0 when every replay was requested, 3 when one could not reach the router, else 1."""
    listed, token = _collect(connection, request, limit)
    more = f", more exist (at most {limit} at a time: run it again)" if token else ""
    if not listed:
        console.print(shown(f"no exception matches ({where}); nothing to replay"))
        return EXIT_OK
    console.print(exceptions_table(f"{len(listed)} exception(s) to replay ({where}){more}", listed, now))
    if not yes and not typer.confirm(f"Replay these {len(listed)} exception(s)?", default=False):
        console.print("nothing was replayed")
        return EXIT_NO
    failed: list[int] = []
    for exception in listed:
        one = exception_service_pb2.ReplayExceptionRequest(
            exception_id=exception.exception_id, reason=reason, replayed_by=person
        )
        answer, error = _attempt(connection, "ReplayException", one)
        if error is None:
            console.print(shown(_replayed_text(exception, answer)))
            continue
        lines, code = _failure(error, connection, "ReplayException")
        failed.append(code)
        console.print(f"[red]{shown(f'{exception.exception_id}: ' + ' '.join(lines))}[/red]")
    console.print(f"{len(listed) - len(failed)} of {len(listed)} replay(s) requested, {len(failed)} failed")
    if failed:
        return EXIT_UNREACHABLE if EXIT_UNREACHABLE in failed else EXIT_NO
    return EXIT_OK


@app.command()
@connection_options(address=ADDRESS, address_envvar=ADDRESS_ENVVAR, peer=PEER)
def summary(
    team: Annotated[str, typer.Option("--team", help="Only this owner team.")] = "",
    json_: JsonOption = False,
    *,
    connection: Connection,
) -> None:
    """The backlog by team and type (open, acknowledged, escalated, occurrences, the oldest), and how long closing
    an exception takes (p50/p90/p99 of closures in the last 30 days, overall and per team).

    Exit 0 with the summary, 1 when the call is refused, 3 when exception-router cannot be reached.
    """
    answer = _run(
        connection, "SummarizeExceptions", exception_service_pb2.SummarizeExceptionsRequest(owner_team=team.strip())
    )
    if json_:
        _print_json(as_json(answer))
        raise typer.Exit(EXIT_OK)
    now = datetime.now(UTC)
    console.print(backlog_table(answer, team.strip(), now))
    console.print(closure_table(answer, team.strip()))
    raise typer.Exit(EXIT_OK)
