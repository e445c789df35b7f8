"""invoice-status's storage: the invoice stream (source of truth) through the command handler.

One object per invoice on ``<ns>.invoice.<invoice id>.<event>``. The read models (other invoices' quantities,
duplicates, the blocked list) are the in-memory :class:`~services.invoice_status.facts.InvoiceLedger`, followed
from this stream and fed by the handler after each append; nothing of this service is kept in Valkey yet besides
the idempotency claims of caller-chosen keys.
"""

from __future__ import annotations

from collections.abc import Callable

from libs.runtime.commands import CommandHandler, StreamLog
from libs.runtime.events import Event, EventPublisher, EventReader
from services.invoice_status import events
from services.invoice_status.decider import InvoiceEvent, InvoiceState

InvoiceCommands = CommandHandler[InvoiceState, InvoiceEvent]

_BYTES_PER_LINE = 2_000  # an invoice line, its match figures and their contract form
_BYTES_PER_INVOICE = 4_096


def invoice_log(
    publisher: EventPublisher, reader: EventReader, workflow_key: Callable[[str], str]
) -> StreamLog[InvoiceEvent]:
    """``workflow_key(invoice id)``: the PO id the invoice's later events carry (its submission names it)."""

    def encode(invoice_id: str, event: InvoiceEvent) -> Event:
        return events.encode(invoice_id, event, workflow_key=workflow_key(invoice_id))

    return StreamLog(publisher, reader, events.DOMAIN, encode=encode, decode=events.decode)


def size_of(state: InvoiceState) -> int:
    """About what a folded invoice holds in memory."""
    lines = len(state.submitted.invoice.lines) if state.submitted is not None else 0
    return _BYTES_PER_INVOICE + _BYTES_PER_LINE * lines
