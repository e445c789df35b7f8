"""What invoice-status publishes: one event per transition of an invoice, on ``<ns>.invoice.<invoice id>.<name>``
(``submitted|matched|blocked|released|approved|paid|disputed|cancelled``).

``encode`` turns a decider event into the envelope's payload; ``decode`` turns a stored event back into the decider
event ``evolve`` folds. The workflow key is the PO id of the invoice's first line: the submission and the matches
carry it; the other transitions do not, so their caller passes it (``workflow_key=``, from the folded state,
:func:`workflow_key_of`).

Invoices have no versions: ``object_version`` is 0. A submission's idempotency key is the command's; the other
transitions' keys are derived from the invoice id, the event name and the payload's fingerprint, so the same
transition encoded twice is one message (a re-match carries its fact versions, which differ between re-matches).
"""

from __future__ import annotations

from google.protobuf.message import DecodeError, Message

from libs.runtime.events import Event, StoredEvent, content_sha256, readable
from libs.runtime.values import date_from_proto, date_to_proto, money_from_proto, money_to_proto
from services.invoice_status import mapping
from services.invoice_status.decider import (
    ApprovedForPayment,
    Blocked,
    Cancelled,
    Disputed,
    InvoiceEvent,
    InvoiceState,
    InvoiceSubmitted,
    Matched,
    Paid,
    Released,
)
from services.invoice_status.domain import OBJECT_TYPE, MatchResult
from syncgov.invoice.v1 import events_pb2, invoice_pb2

DOMAIN = "invoice"
SYNCGOV_SYSTEM = "syncgov"
SUBMITTED = "submitted"
MATCHED = "matched"
BLOCKED = "blocked"
RELEASED = "released"
APPROVED = "approved"
PAID = "paid"
DISPUTED = "disputed"
CANCELLED = "cancelled"
NAMES = (SUBMITTED, MATCHED, BLOCKED, RELEASED, APPROVED, PAID, DISPUTED, CANCELLED)


def _first_po(match: MatchResult) -> str:
    return match.lines[0].po_id if match.lines else ""


def workflow_key_of(state: InvoiceState) -> str:
    """The workflow key of an invoice's events: the PO id of its first line ("" for no invoice)."""
    submitted = state.submitted
    if submitted is None or not submitted.invoice.lines:
        return ""
    return submitted.invoice.lines[0].po_id


def submitted_document(event: InvoiceSubmitted) -> invoice_pb2.Invoice:
    """The invoice as the submission records it: the contract's document when the command kept it."""
    if isinstance(event.document, invoice_pb2.Invoice):
        return event.document
    return mapping.invoice_to_proto(event.invoice)


def encode(invoice_id: str, event: InvoiceEvent, *, workflow_key: str = "") -> Event:
    """The event to publish for a decider event of invoice ``invoice_id``."""
    key = ""
    fingerprint = ""
    payload: Message
    if isinstance(event, InvoiceSubmitted):
        name, key, fingerprint = SUBMITTED, event.idempotency_key, event.fingerprint
        currency = event.invoice.currency
        payload = events_pb2.InvoiceSubmitted(
            invoice=submitted_document(event),
            facts=mapping.facts_to_proto(event.facts),
            content_sha256=event.fingerprint,
        )
        payload.match.CopyFrom(mapping.MATCH_FORMS.form(event.match, currency))  # kept for the submission's answer
        workflow_key = event.invoice.lines[0].po_id if event.invoice.lines else workflow_key
    elif isinstance(event, Matched | Blocked):
        name = MATCHED if isinstance(event, Matched) else BLOCKED
        message_type = events_pb2.InvoiceMatched if isinstance(event, Matched) else events_pb2.InvoiceBlocked
        payload = message_type(facts=mapping.facts_to_proto(event.facts))
        mapping.fill_match(payload.match, event.match)
        workflow_key = _first_po(event.match) or workflow_key
    elif isinstance(event, Released):
        name = RELEASED
        payload = events_pb2.InvoiceReleased(
            released_by=event.released_by,
            reason=event.reason,
            overridden=mapping.reasons_to_proto(event.overridden),
            released_through=event.released_through,
        )
    elif isinstance(event, ApprovedForPayment):
        name = APPROVED
        payload = events_pb2.InvoiceApprovedForPayment(approved_by=event.approved_by)
    elif isinstance(event, Paid):
        name = PAID
        payload = events_pb2.InvoicePaid(
            payment_reference=event.payment_reference,
            amount=money_to_proto(event.amount, event.currency),
            paid_on=date_to_proto(event.paid_on),
        )
    elif isinstance(event, Disputed):
        name = DISPUTED
        payload = events_pb2.InvoiceDisputed(reason=event.reason)
    else:
        name = CANCELLED
        payload = events_pb2.InvoiceCancelled(reason=event.reason)
    if not key:
        key = f"invoice:{invoice_id}:{name}:{content_sha256(payload)[:32]}"
    return Event(
        domain=DOMAIN,
        object_type=OBJECT_TYPE,
        object_key=invoice_id,
        object_version=0,
        name=name,
        payload=payload,
        idempotency_key=key,
        source_system=SYNCGOV_SYSTEM,
        content_sha256=fingerprint,
        workflow_key=workflow_key,
    )


def decode(stored: StoredEvent) -> InvoiceEvent | None:
    """The decider event a stored invoice event holds (None for anything else on the invoice's subject, and for
    an event that cannot be read: it is logged and left out rather than making the whole invoice unreadable)."""
    return readable(stored, _decode)


def submission_matched(stored: StoredEvent) -> bool:
    """Whether ``stored`` is a submission whose match found nothing to block: read from the payload's flag, without
    decoding the invoice and its match into the domain (False for any other event, and for one unreadable)."""
    if stored.subject.rsplit(".", 1)[-1] != SUBMITTED:
        return False
    try:
        return stored.unpack(events_pb2.InvoiceSubmitted).match.matched
    except (TypeError, DecodeError):  # decode() logs an unreadable event; here it only means "not known matched"
        return False


def _decode(stored: StoredEvent) -> InvoiceEvent | None:
    name = stored.subject.rsplit(".", 1)[-1]
    if name == SUBMITTED:
        submitted = stored.unpack(events_pb2.InvoiceSubmitted)
        invoice, problems = mapping.to_domain(submitted.invoice)
        if invoice is None:  # only validated invoices are ever stored
            raise ValueError(f"stored invoice {submitted.invoice.invoice_id} is unreadable: {problems}")
        return InvoiceSubmitted(
            invoice=invoice,
            fingerprint=submitted.content_sha256,
            idempotency_key=stored.envelope.idempotency_key,
            match=mapping.match_from_proto(submitted.match),
            facts=mapping.facts_from_proto(submitted.facts),
            document=submitted.invoice,
        )
    if name == MATCHED:
        matched = stored.unpack(events_pb2.InvoiceMatched)
        return Matched(mapping.match_from_proto(matched.match), mapping.facts_from_proto(matched.facts))
    if name == BLOCKED:
        blocked = stored.unpack(events_pb2.InvoiceBlocked)
        return Blocked(mapping.match_from_proto(blocked.match), mapping.facts_from_proto(blocked.facts))
    if name == RELEASED:
        released = stored.unpack(events_pb2.InvoiceReleased)
        return Released(
            released.released_by,
            released.reason,
            mapping.reasons_from_proto(released.overridden),
            released.released_through,
        )
    if name == APPROVED:
        return ApprovedForPayment(stored.unpack(events_pb2.InvoiceApprovedForPayment).approved_by)
    if name == PAID:
        paid = stored.unpack(events_pb2.InvoicePaid)
        paid_on = date_from_proto(paid.paid_on)
        if paid_on is None:
            raise ValueError("a stored payment without its date")
        return Paid(paid.payment_reference, money_from_proto(paid.amount), paid.amount.currency_code, paid_on)
    if name == DISPUTED:
        return Disputed(stored.unpack(events_pb2.InvoiceDisputed).reason)
    if name == CANCELLED:
        return Cancelled(stored.unpack(events_pb2.InvoiceCancelled).reason)
    return None
