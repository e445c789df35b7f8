"""Receipts reconciled against an older version than the order's latest: over-received after a change order.

receipt-reconciliation reads the order just before it appends a receipt, and po-publication follows receipts
with some lag: a change order landing in either window was decided without the receipt and may have lowered a
line below what is now received. Each followed receipt is queued here and checked against the order's versions
(domain.over_received); every line found raises an over_receipt exception whose id is derived from the receipt
and the line, so a restart replaying the receipt stream raises it once.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

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
# The most receipts waiting for their check; beyond it the oldest are checked no more (logged).
MAX_PENDING = 100_000


class ReceiptChecks:
    def __init__(self, commands: OrderCommands, exceptions: ExceptionReporter, policy: Callable[[], Policy]) -> None:
        self._commands = commands
        self._exceptions = exceptions
        self._policy = policy
        self.pending: deque[domain.ReceiptReconciled] = deque()

    def followed(self, receipt: domain.ReceiptReconciled) -> None:
        """The receipt follower's hand-off (synchronous): queued for ``run``. Only a receipt reconciled against
        some version can be over-received against a later one."""
        if not receipt.is_receipt or receipt.reconciled_version <= 0:
            return
        recorded = datetime.fromtimestamp(receipt.recorded_at_ns / 1e9, UTC)
        if recorded < datetime.now(UTC) - RECHECKED_AT_START:
            return
        if len(self.pending) >= MAX_PENDING:
            dropped = self.pending.popleft()
            log.warning(
                "receipt check queue full: %s of %s is not checked for a racing change", dropped.document, dropped.po_id
            )
        self.pending.append(receipt)

    async def run(self) -> None:
        """Check the queued receipts in stream order (the periodic job). A receipt stays queued until its window
        has passed — the change order that raced it may land after its first check — and one whose check fails
        is checked again at the next run."""
        now_ns = datetime.now(UTC).timestamp() * 1e9
        window_ns = domain.RECEIPT_UNSEEN_FOR / timedelta(microseconds=1) * 1_000
        waiting: deque[domain.ReceiptReconciled] = deque()
        try:
            while self.pending:
                receipt = self.pending[0]
                found_newer = await self.check(receipt)
                self.pending.popleft()
                if not found_newer and receipt.recorded_at_ns + window_ns > now_ns:
                    waiting.append(receipt)  # its window is still open: look again at the next run
        finally:
            self.pending.extendleft(reversed(waiting))

    async def check(self, receipt: domain.ReceiptReconciled) -> bool:
        """Raise over_receipt for what a newer version than the receipt's left over-received; whether the order
        has a newer version at all (until it has, a racing change order may still land)."""
        state = await self._commands.state(receipt.po_id)
        latest = state.latest
        if latest is None or latest.version <= receipt.reconciled_version:
            return False
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
        return True
