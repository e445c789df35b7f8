"""``syncgov trace PO-ID``: one purchase order's workflow, stage by stage, with the time between stages and the trace
id of each (the control plane's GetWorkflow)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import grpc
import typer
from rich.markup import escape

from libs.cli.client import EXIT_OK, Connection, connection_options, explain_rpc_error, stub
from libs.cli.output import make_console, table
from syncgov.controlplane.v1 import controlplane_pb2, controlplane_service_pb2, controlplane_service_pb2_grpc

console = make_console()
NONE = "-"


def stage_name(value: int) -> str:
    """``WORKFLOW_STAGE_INVOICE_BLOCKED`` -> ``invoice blocked``."""
    return controlplane_pb2.WorkflowStage.Name(value).removeprefix("WORKFLOW_STAGE_").lower().replace("_", " ")


def seconds_text(nanos: int) -> str:
    """``+1.234s``, ``+2m03s``; the time since the previous stage."""
    seconds = nanos / 1e9
    if seconds < 60:
        return f"+{seconds:.3f}s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"+{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"+{hours}h{minutes:02d}m"


async def _get(connection: Connection, workflow_key: str) -> Any:
    async with connection.channel() as channel:
        control = stub(controlplane_service_pb2_grpc.ControlPlaneServiceStub, channel)
        request = controlplane_service_pb2.GetWorkflowRequest(workflow_key=workflow_key)
        return await control.GetWorkflow(request, metadata=connection.metadata(), timeout=15)


@connection_options()
def trace(
    po_id: Annotated[str, typer.Argument(metavar="PO-ID", help="Purchase order id (the workflow's key).")],
    *,
    connection: Connection,
) -> None:
    """One PO's workflow end to end: every stage in the order it happened, the time since the previous stage, what
    happened (ERP number, propagation time, findings, exceptions) and the trace id to open in Jaeger.

    Exit 0 with the timeline, 1 when no such workflow exists (NOT_FOUND) or the call is refused, 3 when the control
    plane cannot be reached.
    """
    try:
        answer = asyncio.run(_get(connection, po_id))
    except grpc.aio.AioRpcError as error:
        message, code = explain_rpc_error(error, f"control-plane at {connection.address}")
        console.print(f"[red]{escape(message)}[/red]")
        raise typer.Exit(code) from None
    workflow = answer.workflow
    result = table(
        f"workflow {escape(workflow.workflow_key)}", "when (UTC)", "since", "stage", "object", "detail", "trace id"
    )
    previous = None
    for record in workflow.stages:
        at = record.reached_at.ToNanoseconds()
        detail = record.detail
        if record.HasField("propagation_time"):
            detail += f" (propagation {record.propagation_time.ToNanoseconds() / 1e9:.3f}s)"
        version = f" v{record.version}" if record.version else ""
        result.add_row(
            record.reached_at.ToDatetime().isoformat(timespec="milliseconds"),
            seconds_text(at - previous) if previous is not None else NONE,
            stage_name(record.stage) + version,
            escape(record.object.object_key or NONE),
            escape(detail or NONE),
            record.trace_id or NONE,
        )
        previous = at
    console.print(result)
    raise typer.Exit(EXIT_OK)
