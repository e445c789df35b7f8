"""PurchaseOrderService: proto <-> domain, domain outcomes -> gRPC status. No business rules here."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from google.protobuf import duration_pb2, json_format
from opentelemetry import trace

from libs.policy.engine import Policy
from libs.runtime import attributes
from libs.runtime.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from libs.runtime.events import StoredEvent, WrongLastSequence, content_sha256, now_timestamp
from libs.runtime.exception_reporter import ExceptionReporter
from libs.runtime.idempotency import IdempotencyConflict
from libs.runtime.identity import current_caller
from libs.runtime.paging import page_size
from services.po_publication import domain, mapping
from services.po_publication.events import (
    purchase_order_acknowledged,
    purchase_order_cancelled,
    purchase_order_changed,
    purchase_order_published,
    purchase_order_rejected,
)
from services.po_publication.holds import HeldVersions
from services.po_publication.store import PurchaseOrderStore, SupplierDirectory
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import exception_pb2
from syncgov.po.v1 import events_pb2, po_pb2, po_service_pb2, po_service_pb2_grpc

log = logging.getLogger(__name__)

REPLAY_METADATA = (("syncgov-idempotent-replay", "true"),)


class PurchaseOrderServicer(po_service_pb2_grpc.PurchaseOrderServiceServicer):
    def __init__(
        self,
        store: PurchaseOrderStore,
        exceptions: ExceptionReporter,
        suppliers: SupplierDirectory,
        policy: Callable[[], Policy],
    ) -> None:
        self._store = store
        self._exceptions = exceptions
        self._suppliers = suppliers
        self._policy = policy
        self.holds = HeldVersions(store, exceptions, policy)

    async def PublishPurchaseOrder(
        self, request: po_service_pb2.PublishPurchaseOrderRequest, context: grpc.aio.ServicerContext
    ) -> po_service_pb2.PublishPurchaseOrderResponse:
        order = mapping.normalized_first_version(request.purchase_order)
        mapping.reject_invalid(order, request.idempotency_key, suppliers=self._suppliers, policy=self._policy())
        caller = current_caller()
        key = request.idempotency_key or domain.natural_idempotency_key(caller.system, order.po_id, order.version)
        fingerprint = content_sha256(order)
        _annotate_span(order, key)

        # A natural key names the order and version, so the stream's write guard already refuses a
        # second publication of it; Valkey is asked only when the guard trips. An explicit key could
        # have been used for another order: it is checked before anything is written.
        if request.idempotency_key:
            stored = await self._stored_response(order, key, fingerprint)
            if stored is not None:
                await context.send_initial_metadata(REPLAY_METADATA)
                return stored

        event = purchase_order_published(
            order,
            idempotency_key=key,
            source_system=caller.system,
            content_sha256=fingerprint,
            approved_at=order.approved_at,
        )
        try:
            published = await self._store.append(event, expected_last_sequence=0)
        except WrongLastSequence:
            # The order exists already: a stored response, else the stream's history, decides.
            await context.send_initial_metadata(REPLAY_METADATA)
            return await self._stored_response(order, key, fingerprint) or await self._answer_from_history(
                order, key, fingerprint, await self._store.version(order.po_id, order.version)
            )
        if published.duplicate:  # same Nats-Msg-Id inside the broker's window
            await context.send_initial_metadata(REPLAY_METADATA)
            existing = await self._store.event_at(published.sequence)
            return await self._answer_from_history(order, key, fingerprint, existing)
        response = mapping.publish_response(
            order, published.envelope.event_id, published.sequence, published.envelope.recorded_at, key
        )
        marking = self._store.marking_unacknowledged(order.po_id, order.approved_at)
        return await self._remember(order, key, fingerprint, response, also=marking)

    async def _stored_response(
        self, order: po_pb2.PurchaseOrder, key: str, fingerprint: str
    ) -> po_service_pb2.PublishPurchaseOrderResponse | None:
        try:
            stored = await self._store.idempotency.lookup(key, fingerprint)
        except IdempotencyConflict:
            await self._duplicate_transaction(order, key, evidence=None)
        return None if stored is None else po_service_pb2.PublishPurchaseOrderResponse.FromString(stored)

    async def _remember(
        self,
        order: po_pb2.PurchaseOrder,
        key: str,
        fingerprint: str,
        response: po_service_pb2.PublishPurchaseOrderResponse,
        also=None,
    ) -> po_service_pb2.PublishPurchaseOrderResponse:
        encoded = response.SerializeToString()
        try:
            stored = await self._store.idempotency.remember(key, fingerprint, encoded, also=also)
        except IdempotencyConflict:
            await self._duplicate_transaction(order, key, evidence=None)
        if stored == encoded:
            return response
        return po_service_pb2.PublishPurchaseOrderResponse.FromString(stored)

    async def ChangePurchaseOrder(
        self, request: po_service_pb2.ChangePurchaseOrderRequest, context: grpc.aio.ServicerContext
    ) -> po_service_pb2.ChangePurchaseOrderResponse:
        order = mapping.normalized(request.purchase_order)
        mapping.reject_invalid(
            order, request.idempotency_key, change=True, suppliers=self._suppliers, policy=self._policy()
        )
        caller = current_caller()
        key = request.idempotency_key or domain.natural_idempotency_key(caller.system, order.po_id, order.version)
        fingerprint = content_sha256(order)
        _annotate_span(order, key)
        history = await self._store.order(order.po_id)
        if not history.versions:
            raise NotFound(f"purchase order {order.po_id!r} is unknown: publish version 1 first", reason="PO_NOT_FOUND")
        stored = history.version(order.version)
        if stored is not None and stored.envelope.content_sha256 == fingerprint:
            await context.send_initial_metadata(REPLAY_METADATA)
            return mapping.change_response(stored)
        previous = mapping.order_of(history.versions[-1])
        place = domain.place_version(order.version, history.latest_version)
        if place is domain.Sequence.CURRENT:
            await self._duplicate_transaction(order, key, evidence=stored)
        if place is domain.Sequence.STALE:
            raise FailedPrecondition(
                f"version {order.version} of {order.po_id} is superseded: the latest is {history.latest_version}",
                subject=f"purchase_order/{order.po_id}",
                reason="STALE_VERSION",
                metadata={"latest_version": str(history.latest_version)},
            )
        if place is domain.Sequence.AHEAD:
            return await self.holds.hold(order, key, fingerprint, history, caller.system, context, self._conflict)
        if previous.status == po_pb2.PURCHASE_ORDER_STATUS_CANCELLED:
            raise FailedPrecondition(
                f"purchase order {order.po_id} is cancelled (version {previous.version})",
                subject=f"purchase_order/{order.po_id}",
                reason="PO_CANCELLED",
            )
        before, _ = mapping.to_domain(previous)
        after, _ = mapping.to_domain(order)
        changes = mapping.changes_to_proto(domain.changes_between(before, after))
        event = purchase_order_changed(
            order, changes, idempotency_key=key, source_system=caller.system, content_sha256=fingerprint
        )
        published = await self._append_version(event, history)
        if published.duplicate:
            await context.send_initial_metadata(REPLAY_METADATA)
            return mapping.change_response(await self._store.event_at(published.sequence))
        await self._store.mark_unacknowledged(order.po_id, order.approved_at)
        if history.pending_held():  # a later version waits for this one
            await self.holds.release(order.po_id)
        return po_service_pb2.ChangePurchaseOrderResponse(
            po_id=order.po_id,
            version=order.version,
            event_id=published.envelope.event_id,
            stream_sequence=published.sequence,
            changes=changes,
            idempotency_key=key,
        )

    async def CancelPurchaseOrder(
        self, request: po_service_pb2.CancelPurchaseOrderRequest, context: grpc.aio.ServicerContext
    ) -> po_service_pb2.CancelPurchaseOrderResponse:
        mapping.required_po_id(request.po_id)
        if not request.reason.strip():
            raise InvalidArgument("a cancellation needs a reason", violations=[FieldViolation("reason", "is required")])
        history = await self._store.order(request.po_id)
        if not history.versions:
            raise NotFound(f"purchase order {request.po_id!r} is unknown", reason="PO_NOT_FOUND")
        latest = mapping.order_of(history.versions[-1])
        version = request.version or history.latest_version + 1
        stored = history.version(version)
        if stored is not None and stored.subject.endswith(".cancelled"):
            await context.send_initial_metadata(REPLAY_METADATA)
            return mapping.cancel_response(stored)
        if latest.status == po_pb2.PURCHASE_ORDER_STATUS_CANCELLED:
            raise FailedPrecondition(
                f"purchase order {request.po_id} is already cancelled",
                subject=f"purchase_order/{request.po_id}",
                reason="PO_CANCELLED",
            )
        if domain.place_version(version, history.latest_version) is not domain.Sequence.NEXT:
            raise FailedPrecondition(
                f"a cancellation of {request.po_id} is version {history.latest_version + 1}, not {version}",
                subject=f"purchase_order/{request.po_id}",
                reason="STALE_VERSION",
                metadata={"latest_version": str(history.latest_version)},
            )
        cancelled = po_pb2.PurchaseOrder()
        cancelled.CopyFrom(latest)
        cancelled.version = version
        cancelled.status = po_pb2.PURCHASE_ORDER_STATUS_CANCELLED
        cancelled.approved_at.CopyFrom(now_timestamp())
        caller = current_caller()
        key = request.idempotency_key or domain.natural_idempotency_key(caller.system, request.po_id, version)
        event = purchase_order_cancelled(
            cancelled,
            request.reason,
            idempotency_key=key,
            source_system=caller.system,
            content_sha256=content_sha256(cancelled),
        )
        published = await self._append(event, history.last_sequence, request.po_id)
        await self._store.mark_unacknowledged(request.po_id, cancelled.approved_at)
        if history.pending_held():
            await self.holds.release(request.po_id)
        return po_service_pb2.CancelPurchaseOrderResponse(
            po_id=request.po_id,
            version=version,
            event_id=published.envelope.event_id,
            stream_sequence=published.sequence,
        )

    async def AcknowledgePurchaseOrder(
        self, request: po_service_pb2.AcknowledgePurchaseOrderRequest, context: grpc.aio.ServicerContext
    ) -> po_service_pb2.AcknowledgePurchaseOrderResponse:
        mapping.required_po_id(request.po_id)
        if not request.erp_document_number.strip():
            raise InvalidArgument(
                "the ERP's document number is required",
                violations=[FieldViolation("erp_document_number", "is required")],
            )
        for _attempt in range(3):
            history = await self._store.order(request.po_id)
            stored = history.version(request.version)
            if stored is None:
                raise mapping.unknown_version(request.po_id, request.version, history)
            known = next((a for a in history.acknowledgments if a.envelope.object_version == request.version), None)
            if known is not None:
                acknowledgment = known.unpack(events_pb2.PurchaseOrderAcknowledged).acknowledgment
                if acknowledgment.erp_document_number != request.erp_document_number:
                    raise AlreadyExists(
                        f"version {request.version} was acknowledged as {acknowledgment.erp_document_number}",
                        reason="ALREADY_ACKNOWLEDGED",
                    )
                await context.send_initial_metadata(REPLAY_METADATA)
                return po_service_pb2.AcknowledgePurchaseOrderResponse(
                    acknowledgment=acknowledgment, latest_version_acknowledged=request.version == history.latest_version
                )
            acknowledgment = po_pb2.ErpAcknowledgment(
                version=request.version, erp_document_number=request.erp_document_number
            )
            acknowledgment.acknowledged_at.CopyFrom(
                request.acknowledged_at if request.HasField("acknowledged_at") else now_timestamp()
            )
            approved = mapping.order_of(stored).approved_at
            propagation = duration_pb2.Duration()
            propagation.FromNanoseconds(
                max(0, acknowledgment.acknowledged_at.ToNanoseconds() - approved.ToNanoseconds())
            )
            caller = current_caller()
            key = f"{caller.system}:purchase_order_acknowledgment:{request.po_id}:v{request.version}"
            event = purchase_order_acknowledged(
                request.po_id, acknowledgment, propagation, idempotency_key=key, source_system=caller.system
            )
            try:
                await self._store.append(event, expected_last_sequence=history.last_sequence)
            except WrongLastSequence:
                continue  # a version or another acknowledgment landed meanwhile: read again
            latest = request.version == history.latest_version
            if latest:
                await self._store.mark_acknowledged(request.po_id)
            return po_service_pb2.AcknowledgePurchaseOrderResponse(
                acknowledgment=acknowledgment, latest_version_acknowledged=latest
            )
        raise Aborted(f"purchase order {request.po_id} kept changing; retry", reason="CONCURRENT_WRITE")

    async def RejectPurchaseOrder(
        self, request: po_service_pb2.RejectPurchaseOrderRequest, context: grpc.aio.ServicerContext
    ) -> po_service_pb2.RejectPurchaseOrderResponse:
        mapping.required_po_id(request.po_id)
        if not request.reason.strip():
            raise InvalidArgument("the ERP's reason is required", violations=[FieldViolation("reason", "is required")])
        history = await self._store.order(request.po_id)
        if history.version(request.version) is None:
            raise mapping.unknown_version(request.po_id, request.version, history)
        caller = current_caller()
        key = f"{caller.system}:purchase_order_rejection:{request.po_id}:v{request.version}"
        event = purchase_order_rejected(
            request.po_id, request.version, request.reason, idempotency_key=key, source_system=caller.system
        )
        published = await self._store.append(event, expected_last_sequence=None)
        if published.duplicate:
            await context.send_initial_metadata(REPLAY_METADATA)
        exception = await self._exceptions.raise_exception(
            exception_pb2.EXCEPTION_TYPE_ERP_REJECTED,
            exception_pb2.SEVERITY_HIGH,
            types_pb2.ObjectRef(object_type=domain.OBJECT_TYPE, object_key=request.po_id, version=request.version),
            f"{caller.system} rejected version {request.version} of {request.po_id}: {request.reason}",
            workflow_key=request.po_id,
            discriminator=str(published.sequence),
        )
        return po_service_pb2.RejectPurchaseOrderResponse(exception_id=exception.exception_id)

    async def ListUnacknowledgedPurchaseOrders(
        self, request: po_service_pb2.ListUnacknowledgedPurchaseOrdersRequest, context: grpc.aio.ServicerContext
    ) -> po_service_pb2.ListUnacknowledgedPurchaseOrdersResponse:
        size = page_size(request.page.page_size)
        offset = int(request.page.page_token) if request.page.page_token.isdigit() else 0
        po_ids, more = await self._store.unacknowledged(offset, size)
        entries = []
        for po_id in po_ids:
            history = await self._store.order(po_id)
            if not history.versions:
                continue
            latest = mapping.order_of(history.versions[-1])
            acked = max((a.envelope.object_version for a in history.acknowledgments), default=0)
            entries.append(
                po_service_pb2.UnacknowledgedPurchaseOrder(
                    po_id=po_id,
                    latest_version=latest.version,
                    acknowledged_version=acked,
                    approved_at=latest.approved_at,
                )
            )
        token = str(offset + size) if more else ""
        return po_service_pb2.ListUnacknowledgedPurchaseOrdersResponse(
            purchase_orders=entries, page_info=types_pb2.PageInfo(next_page_token=token)
        )

    async def _append_version(self, event, history):
        """Publish a version; acknowledgments landing meanwhile are no conflict, another version is."""
        for _attempt in range(5):
            try:
                return await self._store.append(event, expected_last_sequence=history.last_sequence)
            except WrongLastSequence:
                fresh = await self._store.order(event.object_key)
                if fresh.latest_version != history.latest_version:
                    break
                history = fresh
        raise Aborted(
            f"purchase order {event.object_key} changed while this command was decided (another writer won); "
            "read it again and retry",
            reason="CONCURRENT_WRITE",
            metadata={"po_id": event.object_key},
        )

    async def _append(self, event, expected_last_sequence: int, po_id: str):
        try:
            return await self._store.append(event, expected_last_sequence=expected_last_sequence)
        except WrongLastSequence:
            raise Aborted(
                f"purchase order {po_id} changed while this command was decided (another writer won); "
                "read it again and retry",
                reason="CONCURRENT_WRITE",
                metadata={"po_id": po_id},
            ) from None

    async def GetPurchaseOrder(
        self, request: po_service_pb2.GetPurchaseOrderRequest, context: grpc.aio.ServicerContext
    ) -> po_service_pb2.GetPurchaseOrderResponse:
        history = await self._store.order(mapping.required_po_id(request.po_id))
        if not history.versions:
            raise NotFound(f"purchase order {request.po_id!r} is unknown", reason="PO_NOT_FOUND")
        wanted = request.version or history.latest_version
        stored = history.version(wanted)
        if stored is None:
            raise NotFound(f"purchase order {request.po_id!r} has no version {wanted}", reason="PO_VERSION_NOT_FOUND")
        response = po_service_pb2.GetPurchaseOrderResponse(
            purchase_order=mapping.order_of(stored), latest_version=history.latest_version
        )
        if history.acknowledgments:
            highest = max(history.acknowledgments, key=lambda a: a.envelope.object_version)
            response.erp_acknowledgment.CopyFrom(highest.unpack(events_pb2.PurchaseOrderAcknowledged).acknowledgment)
        return response

    async def ListPurchaseOrderVersions(
        self, request: po_service_pb2.ListPurchaseOrderVersionsRequest, context: grpc.aio.ServicerContext
    ) -> po_service_pb2.ListPurchaseOrderVersionsResponse:
        versions = await self._store.versions(mapping.required_po_id(request.po_id))
        if not versions:
            raise NotFound(f"purchase order {request.po_id!r} is unknown", reason="PO_NOT_FOUND")
        return po_service_pb2.ListPurchaseOrderVersionsResponse(purchase_orders=[mapping.order_of(e) for e in versions])

    async def _answer_from_history(
        self, order: po_pb2.PurchaseOrder, key: str, fingerprint: str, existing: StoredEvent | None
    ) -> po_service_pb2.PublishPurchaseOrderResponse:
        if existing is None or existing.envelope.content_sha256 != fingerprint:
            await self._duplicate_transaction(order, key, evidence=existing)
        assert existing is not None
        envelope = existing.envelope
        response = mapping.publish_response(
            order, envelope.event_id, existing.sequence, envelope.recorded_at, envelope.idempotency_key
        )
        return await self._remember(order, key, fingerprint, response)

    async def _conflict(self, order: po_pb2.PurchaseOrder, key: str, evidence: StoredEvent | None) -> None:
        await self._duplicate_transaction(order, key, evidence=evidence)

    async def _duplicate_transaction(self, order: po_pb2.PurchaseOrder, key: str, evidence: StoredEvent | None) -> None:
        """Same order and version (or key) with different content: refuse, and raise an exception."""
        if evidence is None:
            evidence = await self._store.version(order.po_id, order.version)
        documents = [json_format.MessageToJson(order, indent=None)]
        if evidence is not None:
            documents.insert(0, json_format.MessageToJson(mapping.order_of(evidence), indent=None))
        exception = await self._exceptions.raise_exception(
            exception_pb2.EXCEPTION_TYPE_DUPLICATE_TRANSACTION,
            exception_pb2.SEVERITY_HIGH,
            types_pb2.ObjectRef(object_type=domain.OBJECT_TYPE, object_key=order.po_id, version=order.version),
            f"purchase order {order.po_id} version {order.version} (key {key}) was sent again with different content",
            evidence=documents,
            workflow_key=order.po_id,
        )
        raise AlreadyExists(
            f"purchase order {order.po_id} version {order.version} already exists with different content; "
            f"publish a change order (version {order.version + 1}) instead",
            reason="DUPLICATE_TRANSACTION",
            metadata={
                "po_id": order.po_id,
                "version": str(order.version),
                "idempotency_key": key,
                "exception_id": exception.exception_id,
            },
        )


def _annotate_span(order: po_pb2.PurchaseOrder, key: str) -> None:
    # The PO id is the workflow key; the server span's name already says what was done.
    span = trace.get_current_span()
    span.set_attributes(
        {
            attributes.WORKFLOW_KEY: order.po_id,
            attributes.OBJECT_VERSION: order.version,
            attributes.IDEMPOTENCY_KEY: key,
        }
    )
