"""``syncgov drift report --system erp``: compare what a system holds with the system of record (ReportSystemState).

The snapshot is one JSON object per line, what the system holds of each object::

    {"object_type": "purchase_order", "key": "PO-1001", "version": 2, "content_sha256": "9f86d0…"}

(``object_type`` defaults to ``purchase_order``; an empty or absent ``content_sha256`` compares the version only).
It is sorted by key and sent in batches, each covering its key range completely — the first from the first key,
the last to the end — so what syncgov holds and the snapshot lacks is found missing without the control plane
keeping anything between batches.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from rich.markup import escape

from libs.cli.client import EXIT_NO, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, Connection, connection_options, stub
from libs.cli.client import error_info as error_info_of
from libs.cli.output import make_console, table
from libs.runtime.bounds import RequestBounds
from syncgov.common.v1 import types_pb2
from syncgov.controlplane.v1 import controlplane_pb2, controlplane_service_pb2, controlplane_service_pb2_grpc

app = typer.Typer(help="Drift between what a system holds and the system of record.", no_args_is_help=True)
console = make_console()

DEFAULT_OBJECT_TYPE = "purchase_order"
MAX_BATCH = 1_000  # the control plane's limit per request
RANGE_TOO_LARGE = "DRIFT_RANGE_TOO_LARGE"
CATCHING_UP = "ORDERS_CATCHING_UP"
COUNTS = ("in_sync", "stale", "missing", "unknown", "content_differs")
OBJECT_TYPES = ("purchase_order",)  # what the control plane reconciles (control_plane/drift.py)
SHA256_HEX = re.compile("[0-9a-f]{64}")
BOUNDS = RequestBounds()
# The control plane answers UNAVAILABLE while it reads the PO stream after a start: how long a report waits for it.
CATCHING_UP_SECONDS = 30.0


class SnapshotError(ValueError):
    """A snapshot line that is not an object the report can carry."""


def kind_name(value: int) -> str:
    """``DRIFT_KIND_CONTENT_DIFFERS`` -> ``content_differs``."""
    return controlplane_pb2.DriftKind.Name(value).removeprefix("DRIFT_KIND_").lower()


def read_snapshot(lines: list[str]) -> list[controlplane_pb2.SystemObjectState]:
    """The snapshot's objects sorted by key; SnapshotError naming the line for anything unreadable, repeated, or
    outside what a report may carry (checked here for the whole snapshot, so a report is refused before its first
    batch writes anything, not halfway)."""
    objects: dict[tuple[str, str], controlplane_pb2.SystemObjectState] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, version = item["key"], item["version"]
            object_type = item.get("object_type") or DEFAULT_OBJECT_TYPE
            sha256 = item.get("content_sha256") or ""
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise SnapshotError(f"line {number}: not an object with key and version ({error})") from None
        # bool is an int in Python; a snapshot's "version": true is not a version.
        if not isinstance(key, str) or type(version) is not int or not isinstance(sha256, str):
            raise SnapshotError(f"line {number}: key and content_sha256 must be strings, version an integer")
        if object_type not in OBJECT_TYPES:
            raise SnapshotError(
                f"line {number}: {object_type!r} is not reconciled; supported: {', '.join(OBJECT_TYPES)}"
            )
        if (object_type, key) in objects:
            raise SnapshotError(f"line {number}: {object_type} {key!r} appears twice")
        try:
            state = controlplane_pb2.SystemObjectState(
                object=types_pb2.ObjectRef(object_type=object_type, object_key=key, version=version),
                content_sha256=sha256,
            )
            # The bounds the control plane's edge applies to every field (key characters and length, version range,
            # hash length), on this one object.
            found = BOUNDS.violations(controlplane_service_pb2.ReportSystemStateRequest(objects=[state]))
        except (ValueError, TypeError, UnicodeError) as error:
            raise SnapshotError(f"line {number}: {object_type} {key!r} cannot be reported ({error})") from None
        if found:
            why = "; ".join(f"{v.field.removeprefix('objects[0].')} {v.description}" for v in found)
            raise SnapshotError(f"line {number}: {object_type} {key!r} cannot be reported: {why}")
        if version < 1:
            raise SnapshotError(f"line {number}: version must be at least 1")
        if sha256 and not SHA256_HEX.fullmatch(sha256):
            raise SnapshotError(f"line {number}: content_sha256 must be empty or 64 lower-case hex digits")
        objects[(object_type, key)] = state
    return sorted(objects.values(), key=lambda o: o.object.object_key)


@dataclass
class Totals:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    repairs_requested: int = 0
    batches: int = 0
    drifts: list[controlplane_pb2.Drift] = field(default_factory=list)

    def add(self, answer: controlplane_service_pb2.ReportSystemStateResponse) -> None:
        self.batches += 1
        for name in COUNTS:
            self.counts[name] += getattr(answer, f"{name}_count")
        self.repairs_requested += answer.repairs_requested
        self.drifts.extend(answer.drifts)

    @property
    def drifted(self) -> int:
        return sum(count for name, count in self.counts.items() if name != "in_sync")


class Interrupted(Exception):
    """A batch failed after others were compared: what they found stands (and was raised, and repaired)."""

    def __init__(self, error: grpc.aio.AioRpcError, totals: Totals) -> None:
        super().__init__(error.details())
        self.error = error
        self.totals = totals


async def _report(connection: Connection, system: str, objects: list[Any], batch: int, repair: bool) -> Totals:
    totals = Totals()
    try:
        return await _batches(connection, system, objects, batch, repair, totals)
    except grpc.aio.AioRpcError as error:
        if totals.batches:
            raise Interrupted(error, totals) from None
        raise


async def _batches(
    connection: Connection, system: str, objects: list[Any], batch: int, repair: bool, totals: Totals
) -> Totals:
    async with connection.channel() as channel:
        control = stub(controlplane_service_pb2_grpc.ControlPlaneServiceStub, channel)

        async def send(after: str, through: str, chunk: list[Any]) -> Any:
            request = controlplane_service_pb2.ReportSystemStateRequest(
                system=system, objects=chunk, repair=repair, covers_after_key=after, covers_through_key=through
            )
            waited = 0.0
            while True:
                try:
                    return await control.ReportSystemState(request, metadata=connection.metadata(), timeout=60)
                except grpc.aio.AioRpcError as error:
                    info = error_info_of(error)
                    catching_up = info is not None and info.reason == CATCHING_UP
                    if not catching_up or waited >= CATCHING_UP_SECONDS:
                        raise
                await asyncio.sleep(1.0)  # the control plane is reading the PO stream after a start
                waited += 1.0

        after, start = "", 0
        while True:
            chunk = objects[start : start + batch]
            through = "" if start + batch >= len(objects) else chunk[-1].object.object_key
            try:
                answer = await send(after, through, chunk)
            except grpc.aio.AioRpcError as error:
                info = error_info_of(error)
                if info is None or info.reason != RANGE_TOO_LARGE or "split_at_key" not in info.metadata:
                    raise
                # syncgov holds too many orders in this range for one batch: end it where the control plane says.
                through = info.metadata["split_at_key"]
                chunk = [o for o in chunk if o.object.object_key <= through]
                answer = await send(after, through, chunk)
            totals.add(answer)
            if not through:
                return totals
            after, start = through, start + len(chunk)


def _as_json(system: str, totals: Totals) -> str:
    return json.dumps(
        {
            "system": system,
            "batches": totals.batches,
            **totals.counts,
            "repairs_requested": totals.repairs_requested,
            "drifts": [
                {
                    "object_type": d.object.object_type,
                    "key": d.object.object_key,
                    "kind": kind_name(d.kind),
                    "authoritative_version": d.authoritative_version,
                    "reported_version": d.reported_version,
                    "reason": d.reason,
                }
                for d in totals.drifts
            ],
        },
        indent=2,
    )


@app.command("report")
@connection_options(system=None)
def report(
    system: Annotated[str, typer.Option("--system", help="The system whose holdings the snapshot lists, e.g. erp.")],
    file: Annotated[
        str,
        typer.Option(
            "--file",
            help="The snapshot: one JSON object per line (object_type, key, version, "
            "content_sha256); - reads standard input.",
        ),
    ] = "-",
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Ask the control plane to re-publish the authoritative version of each "
            "stale, missing or differing object for the system's adapter.",
        ),
    ] = False,
    batch: Annotated[int, typer.Option("--batch", min=1, max=MAX_BATCH, help="Objects per request.")] = 500,
    as_json: Annotated[bool, typer.Option("--json", help="Print the totals and drifts as JSON.")] = False,
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Accept an empty snapshot with --repair (the system holds nothing).")
    ] = False,
    acting_as: Annotated[
        str | None,
        typer.Option(
            "--as",
            help="Call as this system instead of --system (a policy administrator, e.g. "
            "ops-console, may report for any system).",
        ),
    ] = None,
    *,
    connection: Connection,
) -> None:
    """Report what a system holds and print what drifted from the system of record, with totals.

    The whole snapshot is checked before the first batch is sent (a line it cannot carry stops the report before
    anything is written); a batch failing after others were compared prints what those found, then the error.

    Exit 0 when everything is in sync, 1 when drift was found, 2 when the snapshot cannot be read or the report is
    refused (INVALID_ARGUMENT, PERMISSION_DENIED), 3 when the control plane cannot be reached (or is still reading
    the PO stream after 30 s).
    """
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        objects = read_snapshot(text.splitlines())
    except (OSError, UnicodeError, SnapshotError) as error:
        console.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(EXIT_USAGE) from None
    if repair and not objects and not allow_empty:
        # An empty export is more often a failed export than an empty ERP: repairing would resend every order.
        console.print(
            "[red]the snapshot is empty; --repair would resend every order (add --allow-empty if meant)[/red]"
        )
        raise typer.Exit(EXIT_USAGE)
    connection = replace(connection, system=acting_as or system)
    try:
        totals = asyncio.run(_report(connection, system, objects, batch, repair))
    except Interrupted as interrupted:
        _print(system, len(objects), interrupted.totals, as_json)
        message = f"{interrupted.error.code().name}: {interrupted.error.details() or ''}"
        console.print(
            f"[red]{escape(message)}; the {interrupted.totals.batches} batch(es) above were compared (their drift "
            "raised and, with --repair, repaired), the rest of the snapshot was not[/red]"
        )
        raise typer.Exit(_exit_for(interrupted.error)) from None
    except grpc.aio.AioRpcError as error:
        if _exit_for(error) == EXIT_UNREACHABLE:
            console.print(f"[red]cannot reach control-plane at {connection.address}: {escape(error.details() or '')}")
        else:
            console.print(f"[red]{error.code().name}: {escape(error.details() or '')}; nothing was compared[/red]")
        raise typer.Exit(_exit_for(error)) from None
    _print(system, len(objects), totals, as_json)
    raise typer.Exit(EXIT_NO if totals.drifted else EXIT_OK)


def _exit_for(error: grpc.aio.AioRpcError) -> int:
    if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return EXIT_UNREACHABLE
    return EXIT_USAGE


def _print(system: str, reported: int, totals: Totals, as_json: bool) -> None:
    if as_json:
        print(_as_json(system, totals))
    else:
        if totals.drifts:
            drifted = table(f"drift of {escape(system)}", "key", "kind", "syncgov", system, "reason")
            for d in totals.drifts:
                drifted.add_row(
                    escape(d.object.object_key),
                    kind_name(d.kind),
                    f"v{d.authoritative_version}" if d.authoritative_version else "-",
                    f"v{d.reported_version}" if d.reported_version else "-",
                    escape(d.reason),
                )
            console.print(drifted)
        summary = table(f"{escape(system)}: {reported} object(s) reported in {totals.batches} batch(es)", "", "count")
        for name in COUNTS:
            summary.add_row(name, str(totals.counts[name]))
        summary.add_row("repairs requested", str(totals.repairs_requested))
        console.print(summary)
