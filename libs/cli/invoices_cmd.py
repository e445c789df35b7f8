"""``syncgov invoices show|blocked|release``: an invoice's three-way match, the blocked ones, a person's release.

Prices, quantities, variances and tolerances are printed as the service sends them (decimal strings); amounts
sent as google.type.Money are turned into exact decimals, never through a float.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal
from typing import Annotated, Any, cast

import grpc
import typer
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from google.type import date_pb2, money_pb2
from rich.markup import escape
from rich.table import Table

from libs.cli.client import (
    EXIT_OK,
    Connection,
    collect_pages,
    connection_options,
    explain_rpc_error,
    right_refused,
    stub,
)
from libs.cli.client import older_than as blocked_before
from libs.cli.components import COMPONENTS, DEFAULT_GRPC_PORT_BASE
from libs.cli.output import make_console, table
from syncgov.invoice.v1 import invoice_pb2, invoice_service_pb2, invoice_service_pb2_grpc

app = typer.Typer(
    help="Supplier invoices: the three-way match, the blocked ones, a person's release.", no_args_is_help=True
)
console = make_console()

PEER = "invoice-status"
ADDRESS = f"127.0.0.1:{next(c for c in COMPONENTS if c.name == PEER).grpc_port(DEFAULT_GRPC_PORT_BASE)}"
ADDRESS_ENVVAR = "SYNCGOV_INVOICE_ADDR"
BLOCK_REASONS = tuple(
    value.name.removeprefix("BLOCK_REASON_").lower()
    for value in invoice_pb2.BlockReason.DESCRIPTOR.values
    if value.number != invoice_pb2.BLOCK_REASON_UNSPECIFIED
)
BASES = {invoice_pb2.MATCH_BASIS_THREE_WAY: "three-way", invoice_pb2.MATCH_BASIS_TWO_WAY: "two-way"}
NONE = "-"
EXACT = Context(prec=60)  # differences of amounts, exactly


def reason_name(value: int) -> str:
    """``BLOCK_REASON_PRICE_VARIANCE`` -> ``price_variance``, as the policy and the exceptions name it."""
    return invoice_pb2.BlockReason.Name(cast(invoice_pb2.BlockReason, value)).removeprefix("BLOCK_REASON_").lower()


def state_name(value: int) -> str:
    """``INVOICE_STATE_BLOCKED`` -> ``blocked``."""
    return invoice_pb2.InvoiceState.Name(cast(invoice_pb2.InvoiceState, value)).removeprefix("INVOICE_STATE_").lower()


def _decimal(owner: Message, name: str) -> str:
    """A google.type.Decimal field as given; an unset one is shown as absent."""
    if not owner.HasField(name):
        return NONE
    return str(getattr(owner, name).value) or "0"


def money_text(money: money_pb2.Money, currency: bool = True) -> str:
    """Exact: units and nanos as one decimal, at least the two places of most currencies, no trailing zeros beyond."""
    amount = Decimal(money.units) + Decimal(money.nanos).scaleb(-9)
    text = format(amount, "f")
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    shown = f"{whole}.{fraction}"
    return f"{shown} {money.currency_code}".strip() if currency else shown


def _when(stamp: timestamp_pb2.Timestamp, present: bool) -> str:
    if not present:
        return "not known"
    return stamp.ToDatetime().isoformat(timespec="seconds") + "Z"


def _date(value: date_pb2.Date) -> str:
    if not (value.year or value.month or value.day):
        return NONE
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"


def age_text(age: timedelta) -> str:
    """How long ago, to the two largest units: ``3d 4h``, ``5h 2m``, ``12m``; ``<1m`` for less."""
    minutes = int(age.total_seconds() // 60)
    if minutes < 1:
        return "<1m"
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    return " ".join(parts[:2])


def _lines(status: invoice_pb2.InvoiceStatus) -> Iterable[invoice_pb2.LineMatchResult]:
    """The latest match's lines (``line_results``: the whole match travels without them)."""
    return status.line_results


def blocking_reasons(status: invoice_pb2.InvoiceStatus) -> list[str]:
    """Every blocking reason of the latest match (header reasons too when the service sends the whole match)."""
    if status.HasField("match"):
        values: Iterable[int] = status.match.block_reasons
    else:
        values = [reason for line in status.line_results for reason in line.block_reasons]
    return list(dict.fromkeys(reason_name(value) for value in values))


def _variance(check: invoice_pb2.PriceMatch | invoice_pb2.QuantityMatch) -> str:
    variance = _decimal(check, "variance")
    if check.HasField("variance_percent"):
        return f"{variance} ({check.variance_percent.value}%)"
    return variance


def _result(line: invoice_pb2.LineMatchResult) -> str:
    if line.matched:
        return "[green]matched[/green]"
    reasons = ", ".join(reason_name(reason) for reason in line.block_reasons) or "blocked"
    return f"[red]{escape(reasons)}[/red]"


def title(status: invoice_pb2.InvoiceStatus) -> str:
    """Who, what, when and where it stands: the lines above the match table."""
    invoice = status.invoice
    kind = f"credit note for {invoice.credited_invoice_id or '?'}" if invoice.credit_note else "invoice"
    submitted = _when(status.submitted_at, status.HasField("submitted_at"))
    matched = _when(status.matched_at, status.HasField("matched_at"))
    return escape(
        f"{kind} {invoice.invoice_id}: {state_name(status.state)}\n"
        f"supplier {invoice.supplier_id}, number {invoice.invoice_number}, dated {_date(invoice.invoice_date)}, "
        f"gross {money_text(invoice.total_amount)}\n"
        f"policy revision {status.policy_revision}, submitted {submitted}, matched {matched}"
    )


def line_table(status: invoice_pb2.InvoiceStatus) -> Table:
    """One row per invoice line: what it was matched against, by how much it differs, the limit, the outcome."""
    result = table(
        title(status),
        "line",
        "PO/line",
        "basis",
        "PO version",
        "price expected",
        "price invoiced",
        "price variance (%)",
        "price tolerance",
        "qty expected",
        "qty invoiced",
        "by others",
        "cumulative",
        "qty variance (%)",
        "qty tolerance",
        "result",
    )
    for line in _lines(status):
        price = line.price if line.HasField("price") else None
        quantity = line.quantity if line.HasField("quantity") else None
        outcome = _result(line)
        stated, computed = _decimal(line, "stated_amount"), _decimal(line, "computed_amount")
        if NONE not in (stated, computed) and Decimal(stated) != Decimal(computed):
            outcome += f"\namount {stated} stated, {computed} computed"
        result.add_row(
            str(line.line_number),
            escape(f"{line.po_id}/{line.po_line_number}"),
            BASES.get(line.basis, NONE),
            str(line.po_version) if line.po_version else NONE,
            _decimal(price, "expected") if price else NONE,
            _decimal(price, "actual") if price else NONE,
            _variance(price) if price else NONE,
            escape(price.limit.text) if price and price.limit.text else NONE,
            f"{_decimal(quantity, 'expected')} {quantity.basis}".strip() if quantity else NONE,
            _decimal(quantity, "invoiced") if quantity else NONE,
            _decimal(quantity, "invoiced_by_others") if quantity else NONE,
            _decimal(quantity, "cumulative") if quantity else NONE,
            _variance(quantity) if quantity else NONE,
            escape(quantity.limit.text) if quantity and quantity.limit.text else NONE,
            outcome,
        )
    return result


def header_table(match: invoice_pb2.InvoiceMatch) -> Table:
    """The invoice's totals against what its own figures add up to, and the small difference allowed."""
    result = table("header checks", "total", "stated", "computed", "difference", "small difference", "within")
    for check in match.header_checks:
        stated, computed = _decimal(check, "stated"), _decimal(check, "computed")
        allowed = _decimal(check, "small_difference")
        difference = EXACT.subtract(Decimal(stated), Decimal(computed)) if NONE not in (stated, computed) else None
        within = difference is not None and allowed != NONE and EXACT.abs(difference) <= Decimal(allowed)
        result.add_row(
            check.name,
            stated,
            computed,
            format(difference, "f") if difference is not None else NONE,
            allowed,
            "[green]yes[/green]" if within else "[red]no[/red]",
        )
    return result


def release_text(release: invoice_pb2.InvoiceRelease) -> str:
    """The release in force: who, through which system, why, and the blocking reasons it overrode."""
    through = f" through {release.released_through}" if release.released_through else ""
    overridden = ", ".join(reason_name(reason) for reason in release.overridden) or "none"
    return f"released by {release.released_by or '?'}{through}: {release.reason} (overrode {overridden})"


def _print_status(status: invoice_pb2.InvoiceStatus) -> None:
    console.print(line_table(status))
    match = status.match if status.HasField("match") else None
    if match is not None and match.header_checks:
        console.print(header_table(match))
    if match is not None and match.header_block_reasons:
        names = ", ".join(reason_name(reason) for reason in match.header_block_reasons)
        console.print(f"header blocking reasons: [red]{escape(names)}[/red]")
    for duplicate in match.duplicates if match is not None else ():
        rules = " and ".join(duplicate.rules) or "?"
        console.print(
            escape(f"duplicate of {duplicate.invoice_id} (number {duplicate.invoice_number}), found by {rules}")
        )
    for suspect in match.suspected_duplicates if match is not None else ():
        console.print(
            escape(
                f"suspected duplicate of {suspect.invoice_id} (number {suspect.invoice_number}), "
                f"dated {suspect.days_apart} day(s) apart; it blocks nothing"
            )
        )
    if status.HasField("release"):
        console.print(escape(release_text(status.release)))
    if status.exception_ids:
        console.print(escape(f"exceptions: {', '.join(status.exception_ids)}"))


async def _call(connection: Connection, method: str, request: Message) -> Any:
    async with connection.channel() as channel:
        invoices = stub(invoice_service_pb2_grpc.InvoiceStatusServiceStub, channel)
        return await getattr(invoices, method)(request, metadata=connection.metadata(), timeout=15)


def _run(connection: Connection, method: str, request: Message) -> Any:
    """The answer of one call; a failure is one line (code: details), an explanation when useful, and the exit."""
    try:
        return asyncio.run(_call(connection, method, request))
    except grpc.aio.AioRpcError as error:
        message, code = explain_rpc_error(error, f"{PEER} at {connection.address}")
        console.print(f"[red]{escape(message)}[/red]")
        if error.code() == grpc.StatusCode.PERMISSION_DENIED and method == "ReleaseInvoice":
            console.print(
                escape(
                    right_refused(
                        error,
                        connection.system or "",
                        done="released",
                        right="invoice_release",
                        verb="release",
                        hint="--system",
                    )
                )
            )
        raise typer.Exit(code) from None


@app.command()
@connection_options(address=ADDRESS, address_envvar=ADDRESS_ENVVAR, peer=PEER)
def show(
    invoice_id: Annotated[str, typer.Argument(metavar="INVOICE-ID", help="Invoice id.")],
    *,
    connection: Connection,
) -> None:
    """An invoice's latest three-way match: per line and for the header, duplicates, the release, the exceptions.

    Exit 0 with the match, 1 when no such invoice was submitted (NOT_FOUND) or the call is refused,
    3 when invoice-status cannot be reached.
    """
    answer = _run(connection, "GetInvoice", invoice_service_pb2.GetInvoiceRequest(invoice_id=invoice_id))
    _print_status(answer.status)
    raise typer.Exit(EXIT_OK)


def _reason(name: str | None) -> invoice_pb2.BlockReason:
    """``price_variance`` -> BLOCK_REASON_PRICE_VARIANCE; none: any reason."""
    if not name:
        return invoice_pb2.BLOCK_REASON_UNSPECIFIED
    try:
        return cast(invoice_pb2.BlockReason, invoice_pb2.BlockReason.Value(f"BLOCK_REASON_{name.strip().upper()}"))
    except ValueError:
        raise typer.BadParameter(f"{name!r} is not one of {', '.join(BLOCK_REASONS)}", param_hint="--reason") from None


def _blocked_since(status: invoice_pb2.InvoiceStatus, now: datetime) -> str:
    """When the blocking match ran (else when the invoice was recorded) and how long ago."""
    for name in ("matched_at", "submitted_at"):
        if status.HasField(name):
            since = getattr(status, name).ToDatetime(tzinfo=UTC)
            return f"{since.isoformat(timespec='seconds').replace('+00:00', 'Z')} ({age_text(now - since)})"
    return NONE


@app.command()
@connection_options(address=ADDRESS, address_envvar=ADDRESS_ENVVAR, peer=PEER)
def blocked(
    reason: Annotated[
        str | None, typer.Option(help=f"Only invoices blocked for this reason: {', '.join(BLOCK_REASONS)}.")
    ] = None,
    supplier: Annotated[str, typer.Option(metavar="GOLDEN-ID", help="Only invoices of this golden supplier id.")] = "",
    older_than: Annotated[
        str | None, typer.Option(help="Only invoices blocked at least this long ago (e.g. 4h, 7d).")
    ] = None,
    limit: Annotated[int, typer.Option(help="How many invoices at most, oldest first.")] = 50,
    *,
    connection: Connection,
) -> None:
    """Blocked invoices, oldest first: what accounts payable works through."""
    if limit < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--limit")
    now = datetime.now(UTC)
    request = invoice_service_pb2.ListBlockedInvoicesRequest(reason=_reason(reason), supplier_id=supplier.strip())
    before = blocked_before(older_than, now)
    if before is not None:
        request.blocked_before.CopyFrom(before)
    listed, token = collect_pages(
        lambda page: _run(connection, "ListBlockedInvoices", page), request, "statuses", limit
    )
    where = ", ".join(
        part
        for part in (
            f"reason {reason}" if reason else "",
            f"supplier {supplier}" if supplier else "",
            f"blocked {older_than} ago or earlier" if older_than else "",
        )
        if part
    )
    result = table(
        f"{len(listed)} blocked invoice(s){f' ({where})' if where else ''}{', more exist' if token else ''}",
        "invoice",
        "supplier",
        "number",
        "blocked since (age)",
        "reasons",
        "gross amount",
    )
    for status in listed[:limit]:
        result.add_row(
            escape(status.invoice.invoice_id),
            escape(status.invoice.supplier_id),
            escape(status.invoice.invoice_number),
            _blocked_since(status, now),
            ", ".join(blocking_reasons(status)) or NONE,
            money_text(status.invoice.total_amount),
        )
    console.print(result)
    raise typer.Exit(EXIT_OK)


@app.command()
@connection_options(address=ADDRESS, address_envvar=ADDRESS_ENVVAR, peer=PEER)
def release(
    invoice_id: Annotated[str, typer.Argument(metavar="INVOICE-ID", help="Invoice id.")],
    reason: Annotated[str, typer.Option(help="Why the blocking reasons are overridden (audited).")],
    person: Annotated[str, typer.Option(metavar="USER-ID", help="The person releasing it (a user id).")],
    *,
    connection: Connection,
) -> None:
    """Release a blocked invoice: a person overrides its blocking reasons, through the system acted as.

    Exit 0 with the new state; 1 when the invoice is unknown, not blocked (FAILED_PRECONDITION NOT_BLOCKED)
    or the system may not release invoices (PERMISSION_DENIED); 2 on usage; 3 when invoice-status cannot
    be reached.
    """
    if not reason.strip():
        raise typer.BadParameter("is required", param_hint="--reason")
    if not person.strip():
        raise typer.BadParameter("is required", param_hint="--person")
    request = invoice_service_pb2.ReleaseInvoiceRequest(
        invoice_id=invoice_id, reason=reason.strip(), released_by=person.strip()
    )
    answer = _run(connection, "ReleaseInvoice", request)
    status = answer.status
    console.print(escape(f"{status.invoice.invoice_id or invoice_id}: {state_name(status.state)}"))
    if status.HasField("release"):
        console.print(escape(release_text(status.release)))
    raise typer.Exit(EXIT_OK)
