"""``syncgov workflows stuck``: the PO workflows with a stage waiting past the policy's SLA (ListStuckWorkflows)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Annotated, Any

import grpc
import typer
from google.protobuf import json_format
from rich.markup import escape

from libs.cli.client import EXIT_OK, Connection, connection_options, explain_rpc_error, stub
from libs.cli.output import make_console, table
from syncgov.common.v1 import types_pb2
from syncgov.controlplane.v1 import controlplane_service_pb2, controlplane_service_pb2_grpc

app = typer.Typer(help="PO workflows end to end: the ones stuck past their SLA.", no_args_is_help=True)
console = make_console()
EXIT_STUCK = 2


def waited(since_ns: int, now: datetime) -> str:
    seconds = max(0, int(now.timestamp() - since_ns / 1e9))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


async def _stuck(connection: Connection, stage: str, limit: int) -> list[Any]:
    async with connection.channel() as channel:
        control = stub(controlplane_service_pb2_grpc.ControlPlaneServiceStub, channel)
        listed: list[Any] = []
        token = ""
        while len(listed) < limit:
            request = controlplane_service_pb2.ListStuckWorkflowsRequest(
                stage=stage, page=types_pb2.PageRequest(page_size=min(limit - len(listed), 200), page_token=token)
            )
            answer = await control.ListStuckWorkflows(request, metadata=connection.metadata(), timeout=15)
            listed.extend(answer.workflows)
            token = answer.page_info.next_page_token
            if not token:
                break
        return listed[:limit]


@app.command("stuck")
@connection_options()
def stuck(
    *,
    stage: Annotated[
        str, typer.Option("--stage", help="Only this stage: po_acknowledgment, receipt_sync or invoice_match.")
    ] = "",
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="At most this many workflows.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (protobuf's JSON mapping) for scripts.")] = False,
    connection: Connection,
) -> None:
    """The workflows with a stage waiting longer than the policy's SLA, the longest waiting first: which stage, what
    waits (the PO version, the order, the invoice), for how long, the limit and the sla_breach exception raised.

    Exit 0 when nothing is stuck, 2 when something is (for scripts and cron), 1 when the call is refused, 3 when the
    control plane cannot be reached.
    """
    try:
        workflows = asyncio.run(_stuck(connection, stage, limit))
    except grpc.aio.AioRpcError as error:
        message, code = explain_rpc_error(error, f"control-plane at {connection.address}")
        console.print(f"[red]{escape(message)}[/red]")
        raise typer.Exit(code) from None
    if as_json:
        rows = [json_format.MessageToDict(w, preserving_proto_field_name=True) for w in workflows]
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        raise typer.Exit(EXIT_STUCK if workflows else EXIT_OK)
    if not workflows:
        console.print("No workflow is waiting past its SLA.")
        raise typer.Exit(EXIT_OK)
    now = datetime.now(UTC)
    result = table(
        f"{len(workflows)} stuck workflow(s)", "workflow", "stage", "waiting on", "waiting", "limit", "exception"
    )
    # The listing's order is fixed for paging; a person reads the longest waiting first.
    breaches = sorted(
        ((workflow, breach) for workflow in workflows for breach in workflow.breaches),
        key=lambda pair: (pair[1].waiting_since.ToNanoseconds(), pair[0].workflow_key),
    )
    for workflow, breach in breaches:
        version = f" v{breach.object.version}" if breach.object.version else ""
        result.add_row(
            escape(workflow.workflow_key),
            breach.stage,
            escape(f"{breach.object.object_type} {breach.object.object_key}{version}"),
            waited(breach.waiting_since.ToNanoseconds(), now),
            f"{breach.limit.ToSeconds()}s ({breach.criticality})",
            breach.exception_id,
        )
    console.print(result)
    raise typer.Exit(EXIT_STUCK)
