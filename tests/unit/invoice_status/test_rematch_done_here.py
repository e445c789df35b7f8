"""Which submissions the re-match consumer may acknowledge unhandled: those whose request did its work (no sockets;
the consumer's side is tests/integration/test_jetstream_runtime.py)."""

from __future__ import annotations

from typing import Any, cast

from services.invoice_status import rematch
from services.invoice_status.facts import InvoiceLedger
from services.invoice_status.rematch import Rematcher
from tests.unit.invoice_status.builders import invoice, line
from tests.unit.invoice_status.test_facts import matched_with


def _rematcher(ledger: InvoiceLedger) -> Rematcher:
    unused = cast(Any, None)  # the commands, the matcher, the raising and the policy: not asked here
    return Rematcher(unused, unused, ledger, unused, unused, unused)


def test_a_submission_that_missed_nothing_is_done_here_once():
    ledger = InvoiceLedger()
    ledger.fold("I-1", matched_with(1, invoice(line(quantity="4"), invoice_id="I-1", number="A-1"), 0))
    ledger.fold("I-2", matched_with(2, invoice(line(quantity="4"), invoice_id="I-2", number="A-2"), 1))
    rematcher = _rematcher(ledger)
    rematcher.submitted_here("I-2", 2)
    assert rematcher.done_here(2)
    assert not rematcher.done_here(2)  # asked once: a redelivery is handled
    assert not rematcher.done_here(1)  # not submitted here


def test_what_only_the_consumer_can_settle_is_left_to_it():
    ledger = InvoiceLedger()
    ledger.fold("I-1", matched_with(1, invoice(line(quantity="4"), invoice_id="I-1", number="A-1"), 0))
    # I-2 was matched at the same instant as I-1, without it: the consumer re-matches it.
    ledger.fold("I-2", matched_with(2, invoice(line(quantity="4"), invoice_id="I-2", number="A-2"), 0))
    credit_note = invoice(line(quantity="1"), invoice_id="C-1", number="CN-1", credit_note=True, credits="I-1")
    ledger.fold("C-1", matched_with(3, credit_note, 2))  # the consumer re-matches the invoice it credits
    rematcher = _rematcher(ledger)
    rematcher.submitted_here("I-2", 2)
    rematcher.submitted_here("C-1", 3)
    rematcher.submitted_here("I-9", 9)  # the ledger has not read the stream up to it: missed may not be final
    assert [rematcher.done_here(sequence) for sequence in (2, 3, 9)] == [False, False, False]


def test_submissions_whose_delivery_went_elsewhere_are_forgotten_oldest_first(monkeypatch):
    monkeypatch.setattr(rematch, "SETTLED_HERE_KEPT", 3)
    ledger = InvoiceLedger()
    for sequence in range(1, 6):
        number = f"A-{sequence}"
        ledger.fold(
            f"I-{sequence}",
            matched_with(
                sequence, invoice(line(po=f"PO-{sequence}"), invoice_id=f"I-{sequence}", number=number), sequence - 1
            ),
        )
    rematcher = _rematcher(ledger)
    for sequence in range(1, 6):
        rematcher.submitted_here(f"I-{sequence}", sequence)
    assert [rematcher.done_here(sequence) for sequence in range(1, 6)] == [False, False, True, True, True]
