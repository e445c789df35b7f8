"""``syncgov suppliers import FILE.csv --system erp``: a supplier master file through the same path as any upsert."""

from __future__ import annotations

import asyncio
import csv
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.progress import Progress
from rich.table import Table

from libs.cli.client import EXIT_NO, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, Connection, connection_options, stub
from libs.cli.output import make_console
from syncgov.common.v1 import types_pb2
from syncgov.supplier.v1 import supplier_pb2, supplier_service_pb2, supplier_service_pb2_grpc

app = typer.Typer(help="Supplier master data.", no_args_is_help=True)
console = make_console()

COLUMNS = (
    "local_id",
    "legal_name",
    "country",
    "tax_scheme",
    "tax_id",
    "street",
    "city",
    "postal_code",
    "phone",
    "email",
    "iban",
    "bic",
    "payment_terms",
)
REQUIRED = ("local_id", "legal_name")
OUTCOMES = {
    supplier_pb2.MATCH_OUTCOME_NEW: "new golden records",
    supplier_pb2.MATCH_OUTCOME_MERGED: "merged into an existing golden record",
    supplier_pb2.MATCH_OUTCOME_SUSPECTED: "suspected duplicates (a person decides)",
    supplier_pb2.MATCH_OUTCOME_UNCHANGED: "unchanged (already known)",
}


def row_to_record(row: dict[str, str], system: str) -> supplier_pb2.SupplierRecord:
    def value(name: str) -> str:
        return (row.get(name) or "").strip()

    record = supplier_pb2.SupplierRecord(
        source_system=system,
        local_id=value("local_id"),
        legal_name=value("legal_name"),
        payment_terms=value("payment_terms"),
    )
    if value("tax_id"):
        record.tax_ids.add(scheme=value("tax_scheme") or "vat", value=value("tax_id"))
    if value("street") or value("city") or value("postal_code") or value("country"):
        record.addresses.append(
            types_pb2.PostalAddress(
                lines=[value("street")] if value("street") else [],
                locality=value("city"),
                postal_code=value("postal_code"),
                country_code=value("country"),
            )
        )
    if value("phone") or value("email"):
        record.contacts.add(phone=value("phone"), email=value("email"))
    if value("iban"):
        record.bank_accounts.add(iban=value("iban"), bic=value("bic"))
    return record


async def _import(rows: list[dict[str, str]], system: str, connection: Connection, concurrency: int) -> Counter[str]:
    totals: Counter[str] = Counter()
    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    for row in rows:
        queue.put_nowait(row)
    async with connection.channel() as channel:
        suppliers = stub(supplier_service_pb2_grpc.SupplierNormalizationServiceStub, channel)
        with Progress(console=console, transient=False) as progress:
            task = progress.add_task(f"importing as {system}", total=len(rows))

            async def worker() -> None:
                while not queue.empty():
                    row = queue.get_nowait()
                    try:
                        answer = await suppliers.SubmitSupplierRecord(
                            supplier_service_pb2.SubmitSupplierRecordRequest(record=row_to_record(row, system)),
                            metadata=connection.metadata(),
                            timeout=30,
                        )
                    except grpc.aio.AioRpcError as error:
                        if error.code() == grpc.StatusCode.UNAVAILABLE:
                            raise
                        totals["refused"] += 1
                        totals[f"refused: {error.code().name}"] += 1
                    else:
                        totals["records"] += 1
                        totals[OUTCOMES.get(answer.outcome, "other")] += 1
                        totals["corrections"] += len(answer.corrections)
                        totals["invalid values (findings)"] += len(answer.findings)
                        totals["invalid identifiers"] += sum(
                            1 for f in answer.findings if f.field.startswith(("identifiers", "bank_accounts"))
                        )
                    progress.advance(task)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
    return totals


@app.command("import")
@connection_options(
    address="127.0.0.1:50051", address_envvar="SYNCGOV_SUPPLIER_ADDR", peer="supplier-normalization", system=None
)
def import_file(
    file: Annotated[Path, typer.Argument(exists=True, help=f"CSV with columns {', '.join(COLUMNS)}.")],
    system: Annotated[str, typer.Option(help="The system the file comes from (it must report as itself).")],
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 16,
    *,
    connection: Connection,
) -> None:
    """Load a supplier master file; print records, corrections, invalid identifiers, merges, suspects."""
    with file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            console.print(f"[red]{file}: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}[/red]")
            raise typer.Exit(EXIT_USAGE)
        rows = list(reader)
    try:
        connection = replace(connection, system=system)
        totals = asyncio.run(_import(rows, system, connection, max(1, concurrency)))
    except grpc.aio.AioRpcError as error:
        console.print(f"[red]cannot reach supplier-normalization at {connection.address}: {error.details()}[/red]")
        raise typer.Exit(EXIT_UNREACHABLE) from None
    table = Table(title=f"import of {file.name} as {system}")
    table.add_column("")
    table.add_column("count", justify="right")
    for label in (
        "records",
        *OUTCOMES.values(),
        "corrections",
        "invalid values (findings)",
        "invalid identifiers",
        "refused",
    ):
        table.add_row(label, str(totals.get(label, 0)))
    for label, count in sorted(totals.items()):
        if label.startswith("refused: "):
            table.add_row(label, str(count))
    console.print(table)
    raise typer.Exit(EXIT_NO if totals.get("refused") else EXIT_OK)
