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
from syncgov.common.v1 import types_pb2
from syncgov.controlplane.v1 import controlplane_pb2, controlplane_service_pb2, controlplane_service_pb2_grpc

app = typer.Typer(help="Drift between what a system holds and the system of record.", no_args_is_help=True)
console = make_console()

DEFAULT_OBJECT_TYPE = "purchase_order"
MAX_BATCH = 1_000  # the control plane's limit per request
RANGE_TOO_LARGE = "DRIFT_RANGE_TOO_LARGE"
COUNTS = ("in_sync", "stale", "missing", "unknown", "content_differs")


class SnapshotError(ValueError):
    """A snapshot line that is not an object the report can carry."""


def kind_name(value: int) -> str:
    """``DRIFT_KIND_CONTENT_DIFFERS`` -> ``content_differs``."""
    return controlplane_pb2.DriftKind.Name(value).removeprefix("DRIFT_KIND_").lower()


def read_snapshot(lines: list[str]) -> list[controlplane_pb2.SystemObjectState]:
    """The snapshot's objects sorted by key; SnapshotError naming the line for anything unreadable or repeated."""
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
        if not isinstance(key, str) or not isinstance(version, int) or not isinstance(sha256, str):
            raise SnapshotError(f"line {number}: key and content_sha256 must be strings, version an integer")
        if (object_type, key) in objects:
            raise SnapshotError(f"line {number}: {object_type} {key!r} appears twice")
        objects[(object_type, key)] = controlplane_pb2.SystemObjectState(
            object=types_pb2.ObjectRef(object_type=object_type, object_key=key, version=version),
            content_sha256=sha256,
        )
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


async def _report(connection: Connection, system: str, objects: list[Any], batch: int, repair: bool) -> Totals:
    totals = Totals()
    async with connection.channel() as channel:
        control = stub(controlplane_service_pb2_grpc.ControlPlaneServiceStub, channel)

        async def send(after: str, through: str, chunk: list[Any]) -> Any:
            request = controlplane_service_pb2.ReportSystemStateRequest(
                system=system, objects=chunk, repair=repair, covers_after_key=after, covers_through_key=through
            )
            return await control.ReportSystemState(request, metadata=connection.metadata(), timeout=60)

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

    Exit 0 when everything is in sync, 1 when drift was found, 2 when the snapshot cannot be read or the report is
    refused (INVALID_ARGUMENT, PERMISSION_DENIED), 3 when the control plane cannot be reached.
    """
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        objects = read_snapshot(text.splitlines())
    except (OSError, SnapshotError) as error:
        console.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(EXIT_USAGE) from None
    connection = replace(connection, system=acting_as or system)
    try:
        totals = asyncio.run(_report(connection, system, objects, batch, repair))
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            console.print(f"[red]cannot reach control-plane at {connection.address}: {escape(error.details() or '')}")
            raise typer.Exit(EXIT_UNREACHABLE) from None
        console.print(f"[red]{error.code().name}: {escape(error.details() or '')}; nothing was compared further[/red]")
        raise typer.Exit(EXIT_USAGE) from None
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
        summary = table(
            f"{escape(system)}: {len(objects)} object(s) reported in {totals.batches} batch(es)", "", "count"
        )
        for name in COUNTS:
            summary.add_row(name, str(totals.counts[name]))
        summary.add_row("repairs requested", str(totals.repairs_requested))
        console.print(summary)
    raise typer.Exit(EXIT_NO if totals.drifted else EXIT_OK)
