"""Versions that arrive before their predecessor: held durably, applied in order, or expired.

A held version is a ``held`` event in the order's own subject, so it survives restarts; Valkey
keeps only the to-do list of deadlines. See the service README for the rules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from google.protobuf import json_format

from libs.policy.engine import Policy
from libs.runtime.errors import Aborted
from libs.runtime.events import WrongLastSequence, now_timestamp
from libs.runtime.exception_reporter import ExceptionReporter
from services.po_publication import domain, mapping
from services.po_publication.events import purchase_order_changed, purchase_order_held, purchase_order_hold_expired
from services.po_publication.store import PurchaseOrderStore
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import exception_pb2
from syncgov.po.v1 import events_pb2, po_pb2, po_service_pb2

log = logging.getLogger(__name__)
REPLAY_METADATA = (("syncgov-idempotent-replay", "true"),)


class HeldVersions:
    def __init__(self, store: PurchaseOrderStore, exceptions: ExceptionReporter, policy: Callable[[], Policy]) -> None:
        self._store = store
        self._exceptions = exceptions
        self._policy = policy

    async def hold(self, order, key: str, fingerprint: str, history, source: str, context, conflict):
        """Keep a version that came before its predecessor, durably, for the policy's hold window."""
        held = next((e for e in history.held if e.envelope.object_version == order.version), None)
        if held is not None:
            if held.envelope.content_sha256 != fingerprint:
                await conflict(order, key, held)
            await context.send_initial_metadata(REPLAY_METADATA)
            return po_service_pb2.ChangePurchaseOrderResponse(
                po_id=order.po_id, version=order.version, held=True, idempotency_key=key
            )
        window = self._policy().out_of_order_hold
        until = now_timestamp()
        until.FromNanoseconds(until.ToNanoseconds() + int(window.total_seconds() * 1e9))
        event = purchase_order_held(order, until, idempotency_key=key, source_system=source, content_sha256=fingerprint)
        try:
            await self._store.append(event, expected_last_sequence=history.last_sequence)
        except WrongLastSequence:
            raise Aborted(f"purchase order {order.po_id} changed meanwhile; retry", reason="CONCURRENT_WRITE") from None
        await self._store.hold_until(order.po_id, until.seconds + until.nanos / 1e9)
        log.info(
            "holding version %s of %s until %s (latest is %s)",
            order.version,
            order.po_id,
            until.ToJsonString(),
            history.latest_version,
        )
        return po_service_pb2.ChangePurchaseOrderResponse(
            po_id=order.po_id, version=order.version, held=True, idempotency_key=key
        )

    async def release(self, po_id: str) -> None:
        """Apply held versions whose predecessor has now landed, in order, as their senders sent them."""
        while True:
            history = await self._store.order(po_id)
            pending = history.pending_held()
            following = next((e for e in pending if e.envelope.object_version == history.latest_version + 1), None)
            if following is None:
                return
            held_order = following.unpack(events_pb2.PurchaseOrderVersionHeld).purchase_order
            previous = mapping.order_of(history.versions[-1])
            if previous.status == po_pb2.PURCHASE_ORDER_STATUS_CANCELLED:
                return
            before, _ = mapping.to_domain(previous)
            after, _ = mapping.to_domain(held_order)
            changes = mapping.changes_to_proto(domain.changes_between(before, after))
            envelope = following.envelope
            event = purchase_order_changed(
                held_order,
                changes,
                idempotency_key=envelope.idempotency_key.removeprefix("held:"),
                source_system=envelope.source_system,
                content_sha256=envelope.content_sha256,
            )
            try:
                await self._store.append(event, expected_last_sequence=history.last_sequence)
            except WrongLastSequence:
                continue  # someone else moved the order; look again
            await self._store.mark_unacknowledged(po_id, held_order.approved_at)
            log.info("applied held version %s of %s", held_order.version, po_id)

    async def expire(self) -> None:
        """Raise out_of_order_version for held versions whose predecessor did not come within the window."""
        now = now_timestamp()
        due = await self._store.holds_due(now.seconds + now.nanos / 1e9)
        for po_id in due:
            await self.release(po_id)
            history = await self._store.order(po_id)
            next_deadline = None
            for held in history.pending_held():
                hold = held.unpack(events_pb2.PurchaseOrderVersionHeld)
                if hold.hold_until.ToNanoseconds() > now.ToNanoseconds():
                    deadline = hold.hold_until.seconds + hold.hold_until.nanos / 1e9
                    next_deadline = deadline if next_deadline is None else min(next_deadline, deadline)
                    continue
                version = held.envelope.object_version
                exception = await self._exceptions.raise_exception(
                    exception_pb2.EXCEPTION_TYPE_OUT_OF_ORDER_VERSION,
                    exception_pb2.SEVERITY_HIGH,
                    types_pb2.ObjectRef(object_type=domain.OBJECT_TYPE, object_key=po_id, version=version),
                    f"version {version} of {po_id} waited for version {history.latest_version + 1} until "
                    f"{hold.hold_until.ToJsonString()}; it was not applied",
                    evidence=[json_format.MessageToJson(hold.purchase_order, indent=None)],
                    workflow_key=po_id,
                    discriminator=str(held.sequence),
                    policy_revision=self._policy().revision,
                )
                try:
                    await self._store.append(
                        purchase_order_hold_expired(po_id, version, exception.exception_id), expected_last_sequence=None
                    )
                except Exception:
                    log.exception("could not record the expiry of %s v%s; it is retried", po_id, version)
                    next_deadline = now.seconds
            await self._store.reschedule_hold(po_id, next_deadline)
