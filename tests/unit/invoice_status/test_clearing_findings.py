"""invoice-status's clearings where a review of them found them wrong, driven as wiring.py feeds them: the
follower's handler with the ledger's state, the command handler's projection hooks (the ledger's and the clearings')
at each of this process's own appends."""

from __future__ import annotations

from typing import Any

from libs.runtime.decider import Recorded
from services.invoice_status.decider import (
    INITIAL,
    Blocked,
    FactVersions,
    InvoiceState,
    Matched,
    Released,
    evolve,
)
from services.invoice_status.domain import Reason
from services.invoice_status.facts import InvoiceLedger
from services.invoice_status.findings import ClearedReasons, TailExceptions, exception_id, reasons_standing
from tests.unit.invoice_status.test_cleared_reasons import Blocking as Clearings
from tests.unit.invoice_status.test_cleared_reasons import make
from tests.unit.invoice_status.test_decider import AWAITING, MATCHED, PRICE, PRICE_AND_QUANTITY, submitted

ID = "I-1"


class Blocking(Clearings):
    """The clearings' handle, recording the raise each clearing names and the raises asked for too."""

    def __init__(self) -> None:
        super().__init__()
        self.raise_ids: list[str] = []
        self.raised: list[tuple[str, tuple[Reason, ...], int]] = []

    async def clear(
        self, invoice_id: str, reason: Reason, raise_id: str, workflow_key: str, sequence: int, why: str
    ) -> None:
        await super().clear(invoice_id, reason, raise_id, workflow_key, sequence, why)
        self.raise_ids.append(raise_id)

    async def raise_for(self, invoice_id: str, state: InvoiceState, match_sequence: int) -> None:
        assert state.match is not None
        self.raised.append((invoice_id, tuple(state.match.reasons), match_sequence))


def _make(stored: set[str], newest: int = 0) -> tuple[ClearedReasons, Blocking]:
    blocking = Blocking()
    cleared, _, _ = make(stored, newest, blocking)
    return cleared, blocking


def _recorded(event: Any, sequence: int) -> Recorded[Any]:
    return Recorded(event, sequence, f"e-{sequence}", sequence, "k", "procurement")


class Replica:
    """One invoice-status process: its ledger fed by its own appends at once (the projection hook) and by its
    follower in stream order; the follower's handler hands the clearings ``ledger.state_of`` as wiring.on_invoice
    does."""

    def __init__(self, cleared: ClearedReasons) -> None:
        self.ledger = InvoiceLedger()
        self.cleared = cleared
        self.stream: list[Recorded[Any]] = []
        self.state: InvoiceState = INITIAL

    async def append(self, event: Any) -> InvoiceState:
        recorded = _recorded(event, len(self.stream) + 1)
        self.stream.append(recorded)
        self.state = evolve(self.state, recorded)
        await self.ledger.applied(ID, self.state, recorded.sequence, recorded)
        await self.cleared.applied(ID, self.state, recorded.sequence, recorded)
        return self.state

    def follower_delivers(self, sequence: int) -> None:
        # ledger.follow skips an event already folded by the hook; then wiring.on_invoice:
        self.ledger.fold(ID, self.stream[sequence - 1])
        self.cleared.followed(ID, self.ledger.state_of(ID), sequence)


async def test_the_replica_that_appended_both_the_block_and_its_end_before_its_follower_caught_up_clears_it():
    """A block and the re-match that ends it, both appended here before the follower read the block: cleared (the
    projection hook saw each append's own state)."""
    raise_1 = exception_id(ID, Reason.AWAITING_RECEIPT, 1)
    cleared, blocking = _make({raise_1})
    replica = Replica(cleared)
    await replica.append(submitted(AWAITING))  # blocked awaiting_receipt at 1; the request raises id(1)
    await replica.append(Matched(MATCHED, FactVersions()))  # the receipt's re-match, before the follower read 1
    replica.follower_delivers(1)
    replica.follower_delivers(2)
    for _ in range(3):
        await cleared.flush()
    assert blocking.cleared == [(ID, Reason.AWAITING_RECEIPT, 2)]


async def test_a_clearing_is_not_published_while_the_invoice_blocks_for_that_reason_again():
    """A clearing of an ended block published after the reason blocked again names the raise it ends, the older one:
    exception-router takes it as overtaken by the newer raise (tests/integration/test_invoice_clearing_findings.py)."""
    stored = {exception_id(ID, Reason.AWAITING_RECEIPT, 1)}
    cleared, blocking = _make(stored)
    replica = Replica(cleared)
    await replica.append(submitted(AWAITING))  # 1: raised id(1)
    replica.follower_delivers(1)
    await replica.append(Matched(MATCHED, FactVersions()))  # 2: the receipt landed
    replica.follower_delivers(2)  # due: clear awaiting_receipt
    now = await replica.append(Blocked(AWAITING, FactVersions()))  # 3: the goods went back
    stored.add(exception_id(ID, Reason.AWAITING_RECEIPT, 3))  # the re-match raised it right after its append
    assert Reason.AWAITING_RECEIPT in reasons_standing(now)
    await cleared.flush()  # the periodic flush, before the follower delivered 3
    # Published or not, a clearing names the raise it ends: id(1), which raise id(3) has overtaken.
    assert blocking.raise_ids in ([], [exception_id(ID, Reason.AWAITING_RECEIPT, 1)])


async def test_a_start_up_tail_still_raises_a_reason_that_stands_after_a_release_covered_re_match():
    """A block whose raises died with its process, then released and re-matched under the release: the start-up tail
    still raises it, since its reason stands (a release does not make it untrue)."""
    newest = 3
    blocking = Blocking()

    async def last() -> int:
        return newest

    handle: Any = blocking
    tail = TailExceptions(handle, last)
    await tail.begin()
    state: InvoiceState = INITIAL
    for sequence, event in enumerate(
        [
            submitted(PRICE_AND_QUANTITY),
            Released("alice", "agreed", (Reason.PRICE_VARIANCE, Reason.QUANTITY_VARIANCE)),
            Blocked(PRICE, FactVersions()),
        ],
        start=1,
    ):
        state = evolve(state, _recorded(event, sequence))
        tail.followed(ID, state, sequence)
    assert Reason.PRICE_VARIANCE in reasons_standing(state)
    await tail.raise_all()
    assert any(Reason.PRICE_VARIANCE in reasons for _, reasons, _ in blocking.raised), (
        "price_variance stands against the released invoice and its exception was never raised"
    )
