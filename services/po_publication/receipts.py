"""Receipts reconciled against an older version than the order's latest: over-received after a change order.

receipt-reconciliation reads the order just before it appends a receipt, and po-publication follows receipts
with some lag: a change order landing in either window was decided without the receipt and may have lowered a
line below what is now received. Each followed receipt is queued here and checked against the order's versions
(domain.over_received); every line found raises an over_receipt exception whose id is derived from the receipt
and the line, so a restart replaying the receipt stream raises it once.

Each replica reads a receipt's order twice (while checks succeed): at the first run after the receipt was followed,
which finds a change order that landed before it (the common race) within a second, and once the receipt's window
(``RECEIPT_UNSEEN_FOR``) and ``SETTLED_AFTER`` more have passed, which judges it against the newest version recorded
in the window, as domain.over_received defines. Reading it at every run in between judged it against whatever
version was newest at that run, at one broker read per receipt, replica and run: at a thousand receipts a second and
a run every half second, forty thousand reads a second for two replicas.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta

from libs.policy.engine import Policy
from libs.runtime.exception_reporter import ExceptionReporter
from services.po_publication import domain
from services.po_publication.store import OrderCommands
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import exception_pb2

log = logging.getLogger(__name__)

# Receipts older than this when followed (a restart replaying the stream) are not queued: a change order racing
# one lands within RECEIPT_UNSEEN_FOR of it, and a restart longer than this is the limit of the check.
RECHECKED_AT_START = timedelta(minutes=10)
# The most receipts waiting for a check, first or last; beyond it the oldest are checked no more (logged).
MAX_PENDING = 100_000
# How long after a receipt's window its last check waits: a version whose clock was read just inside the window is
# appended a little later, and this replica's clock may run ahead of the one that recorded it.
SETTLED_AFTER = timedelta(seconds=2)


class ReceiptChecks:
    def __init__(
        self,
        commands: OrderCommands,
        exceptions: ExceptionReporter,
        policy: Callable[[], Policy],
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._commands = commands
        self._clock_ns = clock_ns
        self._exceptions = exceptions
        self._policy = policy
        self.pending: deque[domain.ReceiptReconciled] = deque()  # followed, not checked yet
        self.waiting: deque[domain.ReceiptReconciled] = deque()  # checked once: checked again when the window passed

    def followed(self, receipt: domain.ReceiptReconciled) -> None:
        """The receipt follower's hand-off (synchronous): queued for ``run``. Only a receipt reconciled against
        some version can be over-received against a later one."""
        if not receipt.is_receipt or receipt.reconciled_version <= 0:
            return
        if receipt.recorded_at_ns < self._clock_ns() - domain.nanoseconds(RECHECKED_AT_START):
            return
        if len(self.pending) + len(self.waiting) >= MAX_PENDING:
            last_check = bool(self.waiting)
            dropped = (self.waiting or self.pending).popleft()
            log.warning(
                "receipt check queue full: %s of %s is not checked %s for a racing change",
                dropped.document,
                dropped.po_id,
                "again" if last_check else "at all",
            )
        self.pending.append(receipt)

    async def run(self) -> None:
        """The periodic job, in the order the receipts were followed: each waiting receipt whose window has passed
        is checked a last time, then each new one a first time (it waits for its last check when its window is
        still open). A receipt whose check fails stays where it was and is checked at the next run."""
        now_ns = self._clock_ns()
        while self.waiting and window_passed(self.waiting[0], now_ns):
            await self.check(self.waiting[0])
            self.waiting.popleft()
        while self.pending:
            receipt = self.pending[0]
            await self.check(receipt)
            self.pending.popleft()
            if not window_passed(receipt, now_ns):  # a version lowering the line may still land in the window
                self.waiting.append(receipt)

    async def check(self, receipt: domain.ReceiptReconciled) -> None:
        """Raise over_receipt for what a newer version than the receipt's left over-received."""
        state = await self._commands.state(receipt.po_id)
        latest = state.latest
        if latest is None or latest.version <= receipt.reconciled_version:
            return
        policy = self._policy()
        found = domain.over_received(receipt, state.versions, policy.over_receipt_percent(latest.order.business_unit))
        for over in found:
            ordered = f"{over.ordered:f} ordered" if over.ordered else "the line removed"
            await self._exceptions.raise_exception(
                exception_pb2.EXCEPTION_TYPE_OVER_RECEIPT,
                exception_pb2.SEVERITY_HIGH,
                types_pb2.ObjectRef(object_type=domain.OBJECT_TYPE, object_key=receipt.po_id, version=over.version),
                f"line {over.line_number} of {receipt.po_id}: {over.received:f} received (receipt "
                f"{receipt.document}, reconciled against version {receipt.reconciled_version}) against {ordered} "
                f"in version {over.version}, a change order that landed before the receipt was known",
                workflow_key=receipt.po_id,
                discriminator=f"{receipt.document}|{over.line_number}",
                policy_revision=policy.revision,
                exception_id=over.exception_id,
            )
            log.info("over_receipt on line %s of %s after version %s", over.line_number, receipt.po_id, over.version)


def window_passed(receipt: domain.ReceiptReconciled, now_ns: int) -> bool:
    """Whether the last check of ``receipt`` is due: its window, and ``SETTLED_AFTER`` for the versions recorded in it
    to have landed, have passed."""
    return now_ns >= receipt.recorded_at_ns + domain.nanoseconds(domain.RECEIPT_UNSEEN_FOR + SETTLED_AFTER)
