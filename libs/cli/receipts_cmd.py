"""``syncgov receipts status PO-ID`` and ``syncgov receipts findings``: what was received against which PO version.

Quantities are printed as the service sends them (decimal strings, in the order line's unit), never
through a float.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any

import grpc
import typer
from google.protobuf.message import Message
from rich.markup import escape
from rich.table import Table

from libs.cli.client import EXIT_OK, Connection, collect_pages, connection_options, explain_rpc_error, stub
from libs.cli.client import older_than as posted_before
from libs.cli.components import COMPONENTS, DEFAULT_GRPC_PORT_BASE
from libs.cli.output import make_console, table
from syncgov.exception.v1 import exception_pb2
from syncgov.receipt.v1 import receipt_pb2, receipt_service_pb2, receipt_service_pb2_grpc

app = typer.Typer(help="Goods receipts and returns, reconciled against purchase order versions.", no_args_is_help=True)
console = make_console()

PEER = "receipt-reconciliation"
ADDRESS = f"127.0.0.1:{next(c for c in COMPONENTS if c.name == PEER).grpc_port(DEFAULT_GRPC_PORT_BASE)}"
ADDRESS_ENVVAR = "SYNCGOV_RECEIPT_ADDR"
RECEIPT_FINDINGS = ("over_receipt", "receipt_unknown_po", "superseded_version", "over_return")
KINDS = {receipt_pb2.RECEIPT_KIND_RECEIPT: "receipt", receipt_pb2.RECEIPT_KIND_RETURN: "return"}
NOT_ON_ORDER = "-"


def finding_name(value: int) -> str:
    """``EXCEPTION_TYPE_OVER_RECEIPT`` -> ``over_receipt``, as the policy and the exception catalogue name it."""
    return exception_pb2.ExceptionType.Name(value).removeprefix("EXCEPTION_TYPE_").lower()


def _decimal(value: Any, present: bool = True) -> str:
    """A google.type.Decimal as given; an unset one is 0 (proto3), an absent ordered quantity is no line."""
    if not present:
        return NOT_ON_ORDER
    return str(value.value) or "0"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def status_table(po_id: str, answer: receipt_service_pb2.GetPurchaseOrderReceiptStatusResponse) -> Table:
    """The per-line receiving status of one order at the version the service reconciles against."""
    version = f"version {answer.po_version}" if answer.po_version else "unknown version"
    title = (
        f"receipts of {po_id} at {version}: "
        f"{'cancelled' if answer.cancelled else 'not cancelled'}, "
        f"fully received {_yes(answer.fully_received)}, {answer.documents} document(s)"
    )
    ordered = f"ordered (v{answer.po_version})" if answer.po_version else "ordered"
    result = table(title, "PO line", ordered, "received", "returned", "rejected", "open", "unit", "fully received")
    for line in answer.lines:
        result.add_row(
            str(line.po_line_number),
            _decimal(line.ordered_quantity, line.HasField("ordered_quantity")),
            _decimal(line.received_quantity),
            _decimal(line.returned_quantity),
            _decimal(line.rejected_quantity),
            _decimal(line.open_quantity, line.HasField("ordered_quantity")),
            line.unit_of_measure,
            _yes(line.fully_received),
        )
    return result


def findings_table(title: str, findings: Iterable[receipt_pb2.ReceiptFinding]) -> Table:
    """Findings of one document: type, PO line (0 = the document), the exception raised for it, detail."""
    result = table(title, "finding", "PO line", "exception id", "detail")
    for finding in findings:
        line = str(finding.po_line_number) if finding.po_line_number else "(document)"
        result.add_row(finding_name(finding.type), line, finding.exception_id, finding.detail)
    return result


async def _call(connection: Connection, method: str, request: Message) -> Any:
    async with connection.channel() as channel:
        receipts = stub(receipt_service_pb2_grpc.ReceiptReconciliationServiceStub, channel)
        return await getattr(receipts, method)(request, metadata=connection.metadata(), timeout=15)


def _run(connection: Connection, method: str, request: Message) -> Any:
    """The answer of one call; a failure is one line (code: details) and the command's exit code."""
    try:
        return asyncio.run(_call(connection, method, request))
    except grpc.aio.AioRpcError as error:
        message, code = explain_rpc_error(error, f"{PEER} at {connection.address}")
        console.print(f"[red]{escape(message)}[/red]")
        raise typer.Exit(code) from None


@app.command()
@connection_options(address=ADDRESS, address_envvar=ADDRESS_ENVVAR, peer=PEER)
def status(
    po_id: Annotated[str, typer.Argument(metavar="PO-ID", help="Purchase order id.")],
    *,
    connection: Connection,
) -> None:
    """Per PO line: ordered (at the version reconciled against), received, returned, rejected, open.

    Exit 0 with the table, 1 when the order is unknown and nothing was received against it (NOT_FOUND)
    or the call is refused, 3 when receipt-reconciliation cannot be reached.
    """
    answer = _run(
        connection,
        "GetPurchaseOrderReceiptStatus",
        receipt_service_pb2.GetPurchaseOrderReceiptStatusRequest(po_id=po_id),
    )
    console.print(status_table(po_id, answer))
    raise typer.Exit(EXIT_OK)


def _finding_type(name: str | None) -> str:
    """``over_receipt`` -> ``EXCEPTION_TYPE_OVER_RECEIPT`` (an exception type the contract knows); none: any."""
    if not name:
        return "EXCEPTION_TYPE_UNSPECIFIED"
    enum_name = f"EXCEPTION_TYPE_{name.strip().upper()}"
    try:
        exception_pb2.ExceptionType.Value(enum_name)
    except ValueError:
        raise typer.BadParameter(
            f"{name!r} is not one of {', '.join(RECEIPT_FINDINGS)}", param_hint="--finding"
        ) from None
    return enum_name


@app.command()
@connection_options(address=ADDRESS, address_envvar=ADDRESS_ENVVAR, peer=PEER)
def findings(
    site: Annotated[str, typer.Option(help="Only documents received at this site.")] = "",
    finding: Annotated[
        str | None, typer.Option(help=f"Only documents with this finding: {', '.join(RECEIPT_FINDINGS)}.")
    ] = None,
    older_than: Annotated[
        str | None, typer.Option(help="Only documents posted at least this long ago (e.g. 1h, 30m, 2d).")
    ] = None,
    limit: Annotated[int, typer.Option(help="How many documents at most, newest first.")] = 50,
    *,
    connection: Connection,
) -> None:
    """Receipts and returns with findings, newest first: the receiving errors an operations lead works through."""
    if limit < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--limit")
    request = receipt_service_pb2.ListReceiptsWithFindingsRequest(site_id=site, finding=_finding_type(finding))
    before = posted_before(older_than, datetime.now(UTC))
    if before is not None:
        request.posted_before.CopyFrom(before)
    fetch = lambda page: _run(connection, "ListReceiptsWithFindings", page)  # noqa: E731 - one page of the listing
    listed, token = collect_pages(fetch, request, "receipts", limit)
    where = ", ".join(
        part
        for part in (
            f"site {site}" if site else "",
            f"finding {finding}" if finding else "",
            f"posted {older_than} ago or earlier" if older_than else "",
        )
        if part
    )
    result = table(
        f"{len(listed)} document(s) with findings{f' ({where})' if where else ''}{', more exist' if token else ''}",
        "posted at",
        "document",
        "kind",
        "PO",
        "site",
        "findings (PO line: exception id)",
    )
    for document in listed:
        result.add_row(
            document.posted_at.ToDatetime().isoformat(timespec="seconds") + "Z",
            f"{document.source_system}/{document.receipt_id}",
            KINDS.get(document.kind, "?"),
            document.po_id,
            document.site_id,
            "\n".join(
                f"{finding_name(f.type)} ({f.po_line_number or 'document'}): {f.exception_id}"
                for f in document.findings
            ),
        )
    console.print(result)
    raise typer.Exit(EXIT_OK)
