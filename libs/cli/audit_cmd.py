"""``syncgov audit tail|verify|export|show``: read the hash-chained audit trail."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import nats
import typer
from google.protobuf import json_format
from rich.table import Table

from libs.audit.chain import verify as verify_chain
from libs.cli.client import EXIT_NO, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, Connection, connection_options
from libs.cli.output import make_console
from libs.runtime.audit import AuditChain
from libs.runtime.subjects import Namespace
from syncgov.common.v1 import types_pb2
from syncgov.controlplane.v1 import controlplane_pb2
from syncgov.controlplane.v1 import controlplane_service_pb2 as cp

app = typer.Typer(help="Read and verify the audit trail.", no_args_is_help=True)
console = make_console()

NatsOption = Annotated[str, typer.Option("--nats-url", envvar="SYNCGOV_NATS_URL", help="NATS server.")]
NamespaceOption = Annotated[str, typer.Option("--namespace", envvar="SYNCGOV_NAMESPACE", help="syncgov namespace.")]


async def _entries(nats_url: str, namespace: str, start: int = 1) -> list[controlplane_pb2.AuditEntry]:
    try:
        nc = await nats.connect(nats_url, connect_timeout=3, max_reconnect_attempts=0, allow_reconnect=False)
    except Exception as error:
        console.print(f"[red]cannot reach NATS at {nats_url}: {error}[/red]")
        raise typer.Exit(EXIT_UNREACHABLE) from None
    try:
        chain = AuditChain(nc.jetstream(), Namespace(namespace))
        return [entry async for entry in chain.entries(start)]
    finally:
        await nc.drain()


def _table(entries: list[controlplane_pb2.AuditEntry], title: str) -> Table:
    table = Table(title=title)
    for column in ("seq", "recorded at", "actor", "action", "object", "outcome", "rev", "reason"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        target = f"{entry.object.object_type}/{entry.object.object_key}"
        if entry.object.version:
            target += f" v{entry.object.version}"
        table.add_row(
            str(entry.sequence),
            entry.recorded_at.ToDatetime().isoformat(timespec="seconds") + "Z",
            entry.actor,
            entry.action,
            target,
            entry.outcome,
            str(entry.policy_revision),
            entry.reason[:120],
        )
    return table


@app.command()
def tail(
    limit: Annotated[int, typer.Option(help="How many of the latest entries.")] = 20,
    nats_url: NatsOption = "nats://127.0.0.1:4222",
    namespace: NamespaceOption = "sg",
) -> None:
    """The latest entries of the chain."""

    async def latest() -> list[controlplane_pb2.AuditEntry]:
        entries = await _entries(nats_url, namespace)
        return entries[-limit:]

    console.print(_table(asyncio.run(latest()), "audit trail (latest)"))


@app.command()
def export(
    out: Annotated[Path, typer.Option(help="JSON-lines file to write, one entry per line.")],
    nats_url: NatsOption = "nats://127.0.0.1:4222",
    namespace: NamespaceOption = "sg",
) -> None:
    """Copy the whole chain to a file an auditor can keep and verify offline."""
    entries = asyncio.run(_entries(nats_url, namespace))
    with out.open("w") as file:
        for entry in entries:
            file.write(json_format.MessageToJson(entry, indent=None) + "\n")
    console.print(f"exported {len(entries)} entries to {out}")


def _read_export(path: Path) -> list[controlplane_pb2.AuditEntry]:
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(json_format.Parse(line, controlplane_pb2.AuditEntry()))
        except (json_format.ParseError, json.JSONDecodeError) as error:
            console.print(f"[red]{path}:{number}: not an audit entry: {error}[/red]")
            raise typer.Exit(EXIT_USAGE) from None
    return entries


@app.command()
def verify(
    file: Annotated[Path | None, typer.Option(help="Verify an exported copy instead of the live stream.")] = None,
    nats_url: NatsOption = "nats://127.0.0.1:4222",
    namespace: NamespaceOption = "sg",
) -> None:
    """Walk the chain; report the first entry whose link or content does not hold. Exit 1 if broken.

    The hash recipe is in docs/audit.md, so an auditor can verify an export with their own tools.
    """
    entries = _read_export(file) if file else asyncio.run(_entries(nats_url, namespace))
    verdict = verify_chain(entries)
    source = str(file) if file else f"stream {Namespace(namespace).stream('audit')}"
    if verdict.intact:
        console.print(f"[green]chain intact: {verdict.entries} entries verified ({source})[/green]")
        if verdict.legacy_entries:
            console.print(
                f"{verdict.legacy_entries} of them sealed with the legacy protobuf hash (before docs/audit.md's "
                "canonical encoding); only this verifier recognises those"
            )
        raise typer.Exit(EXIT_OK)
    broken = verdict.first_break
    assert broken is not None  # not intact
    console.print(f"[red]chain broken at sequence {broken.sequence} ({source}): {broken.reason}[/red]")
    console.print(f"{verdict.entries - 1} entries before it verified")
    raise typer.Exit(EXIT_NO)


@app.command()
@connection_options()
def show(
    object_type: Annotated[str, typer.Argument()],
    object_key: Annotated[str, typer.Argument()],
    *,
    connection: Connection,
) -> None:
    """Every entry about one object, through the control plane's QueryAuditTrail (every page of it)."""
    from libs.cli.policy_cmd import _run

    entries: list[controlplane_pb2.AuditEntry] = []
    token = ""
    while True:
        answer = _run(
            connection,
            "QueryAuditTrail",
            cp.QueryAuditTrailRequest(
                object_type=object_type, object_key=object_key, page=types_pb2.PageRequest(page_token=token)
            ),
        )
        entries.extend(answer.entries)
        token = answer.page_info.next_page_token
        if not token:
            break
    console.print(_table(entries, f"audit trail of {object_type}/{object_key}"))
