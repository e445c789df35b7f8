"""Which blocking exceptions invoice-status clears, and when: folded from the invoice's states, published only once
the raise it ends is stored, the start-up replay clearing again only what the newest events ended."""

from __future__ import annotations

from typing import Any

from libs.runtime.decider import Recorded
from services.invoice_status.decider import INITIAL, Blocked, Cancelled, FactVersions, InvoiceState, Matched, evolve
from services.invoice_status.domain import Reason
from services.invoice_status.findings import ClearedReasons, exception_id
from tests.unit.invoice_status.test_decider import AWAITING, MATCHED, PRICE, submitted

ID = "I-1"


class Blocking:
    def __init__(self) -> None:
        self.cleared: list[tuple[str, Reason, int]] = []

    async def clear(
        self, invoice_id: str, reason: Reason, raise_id: str, workflow_key: str, sequence: int, why: str
    ) -> None:
        self.cleared.append((invoice_id, reason, sequence))


class Story:
    """An invoice's events one after another, each handed to the clearings as the follower hands it."""

    def __init__(self, cleared: ClearedReasons) -> None:
        self.cleared = cleared
        self.state: InvoiceState = INITIAL
        self.sequence = 0

    def then(self, event: Any) -> InvoiceState:
        self.sequence += 1
        self.state = evolve(self.state, Recorded(event, self.sequence, "e", self.sequence, "k", "procurement"))
        self.cleared.followed(ID, self.state, self.sequence)
        return self.state


def make(
    stored: set[str] | None = None, newest: int = 0, blocking: Blocking | None = None
) -> tuple[ClearedReasons, Blocking, set[str]]:
    """Clearings over ``blocking`` (a fresh :class:`Blocking` by default), raises counted stored when in ``stored``
    (the set returned, for a test to add to), ``newest`` the stream's last sequence."""
    raises = stored if stored is not None else set()
    blocking = blocking if blocking is not None else Blocking()

    async def is_stored(raise_id: str) -> bool:
        return raise_id in raises

    async def last() -> int:
        return newest

    handle: Any = blocking
    return ClearedReasons(handle, last, is_stored), blocking, raises


async def test_a_re_match_that_matches_clears_the_reason_once_its_raise_is_stored():
    cleared, blocking, raises = make()
    story = Story(cleared)
    story.then(submitted(AWAITING))  # blocked awaiting_receipt at 1, its exception raised with id of (1)
    story.then(Matched(MATCHED, FactVersions()))  # the receipt landed: matched at 2
    await cleared.flush()
    assert blocking.cleared == []  # the raise the clearing ends is not stored yet: a clearing now would precede it
    raises.add(exception_id(ID, Reason.AWAITING_RECEIPT, 1))
    await cleared.flush()
    await cleared.flush()
    assert blocking.cleared == [(ID, Reason.AWAITING_RECEIPT, 2)]


async def test_a_reason_raised_again_before_the_flush_is_not_cleared_and_another_reason_is():
    cleared, blocking, raises = make()
    story = Story(cleared)
    story.then(submitted(AWAITING))
    story.then(Blocked(PRICE, FactVersions()))  # the receipt landed, at another price: price_variance now
    story.then(Blocked(AWAITING, FactVersions()))  # the goods went back: awaiting_receipt stands again
    raises.update({exception_id(ID, Reason.AWAITING_RECEIPT, 1), exception_id(ID, Reason.PRICE_VARIANCE, 2)})
    await cleared.flush()
    assert blocking.cleared == [(ID, Reason.PRICE_VARIANCE, 3)]


async def test_a_cancelled_invoice_clears_what_still_blocked_it():
    cleared, blocking, raises = make()
    story = Story(cleared)
    story.then(submitted(PRICE))
    story.then(Cancelled("sent twice"))
    raises.add(exception_id(ID, Reason.PRICE_VARIANCE, 1))
    await cleared.flush()
    assert blocking.cleared == [(ID, Reason.PRICE_VARIANCE, 2)]


async def test_the_start_up_replay_clears_again_only_what_the_newest_events_ended():
    cleared, blocking, raises = make(newest=3)
    cleared._tail = 1  # the newest event alone is the tail
    await cleared.begin()
    story = Story(cleared)
    story.then(submitted(AWAITING))  # 1
    story.then(Matched(MATCHED, FactVersions()))  # 2: ended awaiting_receipt long ago (cleared then)
    story.then(Blocked(PRICE, FactVersions()))  # 3, the tail: a block, nothing ended
    raises.update({exception_id(ID, Reason.AWAITING_RECEIPT, 1), exception_id(ID, Reason.PRICE_VARIANCE, 3)})
    await cleared.start()
    assert blocking.cleared == []
    story.then(Matched(MATCHED, FactVersions()))  # 4, live
    await cleared.flush()
    assert blocking.cleared == [(ID, Reason.PRICE_VARIANCE, 4)]
