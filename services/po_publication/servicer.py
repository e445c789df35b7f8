"""PurchaseOrderService: each handler translates the request, runs the command, translates the result.

The rules are in domain.py (decide/evolve); the loop around them is libs/runtime/commands.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import grpc
from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.metrics import Histogram

from libs.policy.engine import Policy
from libs.runtime import attributes
from libs.runtime.commands import Claim, Outcome
from libs.runtime.decider import Refusal
from libs.runtime.errors import NotFound, ServiceError, Unavailable
from libs.runtime.events import content_sha256
from libs.runtime.exception_reporter import ExceptionReporter
from libs.runtime.identity import current_caller
from libs.runtime.paging import decode_page_cursor, encode_page_cursor, page_size
from libs.runtime.refusals import refused
from libs.runtime.values import datetime_from_proto
from services.po_publication import domain, mapping
from services.po_publication.holds import HeldVersions
from services.po_publication.store import OrderCommands, ReadModelRebuilding, UnacknowledgedOrders
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import exception_pb2
from syncgov.po.v1 import po_pb2, po_service_pb2, po_service_pb2_grpc

REPLAY_METADATA = (("syncgov-idempotent-replay", "true"),)
UNACKNOWLEDGED_LISTING = "po.unacknowledged"
Result = Outcome[domain.OrderState, domain.OrderEvent]


class PurchaseOrderServicer(po_service_pb2_grpc.PurchaseOrderServiceServicer):
    def __init__(
        self,
        commands: OrderCommands,
        unacknowledged: UnacknowledgedOrders,
        holds: HeldVersions,
        exceptions: ExceptionReporter,
        suppliers: domain.SupplierDirectory,
        received: domain.ReceivedQuantities,
        receipts_caught_up: Callable[[], bool],
        policy: Callable[[], Policy],
        propagation: Histogram | None = None,
    ) -> None:
        self._propagation = propagation  # approval -> ERP acknowledgment, recorded once per acknowledged version
        self._commands = commands
        self._unacknowledged = unacknowledged
        self._holds = holds
        self._exceptions = exceptions
        self._suppliers = suppliers
        self._received = received
        self._receipts_caught_up = receipts_caught_up
        self._policy = policy

    async def PublishPurchaseOrder(
        self, request: po_service_pb2.PublishPurchaseOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> po_service_pb2.PublishPurchaseOrderResponse:
        document = mapping.normalized_first_version(request.purchase_order)
        order, key, fingerprint, caller = self._version(document, request.idempotency_key, change=False)
        command = domain.PublishOrder(order, document, fingerprint, key, caller)
        claim = Claim(key, fingerprint) if request.idempotency_key else None
        # A first version usually finds no order: it is appended on the guard "no event yet" without a read.
        outcome = await self._run(order.po_id, command, context, assume_new=True, claim=claim)
        stored = outcome.state.version(order.version)
        assert stored is not None
        return mapping.publish_response(stored)

    async def ChangePurchaseOrder(
        self, request: po_service_pb2.ChangePurchaseOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> po_service_pb2.ChangePurchaseOrderResponse:
        document = mapping.normalized(request.purchase_order)
        order, key, fingerprint, caller = self._version(document, request.idempotency_key, change=True)
        command = domain.ChangeOrder(order, document, fingerprint, key, caller, self._received_of(order.po_id))
        claim = Claim(key, fingerprint) if request.idempotency_key else None
        outcome = await self._run(order.po_id, command, context, claim=claim)
        if domain.releasable(outcome.state):  # a later version waited for this one (a retry releases it too)
            await self._holds.release_quietly(order.po_id)
        stored = outcome.state.version(order.version)
        if stored is not None:
            return mapping.change_response(stored)
        return mapping.held_response(outcome.state.held[order.version])

    async def CancelPurchaseOrder(
        self, request: po_service_pb2.CancelPurchaseOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> po_service_pb2.CancelPurchaseOrderResponse:
        po_id = mapping.required_po_id(request.po_id)
        reason = mapping.required_text(request.reason, "reason", "a cancellation's reason")
        caller = current_caller().system
        received = self._received_of(po_id)
        command = domain.CancelOrder(po_id, request.version, reason, request.idempotency_key, caller, received)
        claim = Claim(request.idempotency_key, content_sha256(request)) if request.idempotency_key else None
        outcome = await self._run(po_id, command, context, claim=claim)
        stored = outcome.state.version(request.version) if request.version else outcome.state.latest
        assert stored is not None
        return mapping.cancel_response(stored)

    async def AcknowledgePurchaseOrder(
        self, request: po_service_pb2.AcknowledgePurchaseOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> po_service_pb2.AcknowledgePurchaseOrderResponse:
        po_id = mapping.required_po_id(request.po_id)
        number = mapping.required_text(request.erp_document_number, "erp_document_number", "the ERP's document number")
        acknowledged_at = (
            datetime_from_proto(request.acknowledged_at) if request.HasField("acknowledged_at") else datetime.now(UTC)
        )
        command = domain.AcknowledgeVersion(po_id, request.version, number, acknowledged_at, current_caller().system)
        outcome = await self._run(po_id, command, context)
        if self._propagation is not None and not outcome.replayed:
            propagation = outcome.state.acknowledgments[request.version].propagation
            self._propagation.record(max(propagation.total_seconds(), 0.0))
        return po_service_pb2.AcknowledgePurchaseOrderResponse(
            acknowledgment=mapping.acknowledgment_to_proto(outcome.state.acknowledgments[request.version]),
            latest_version_acknowledged=request.version == outcome.state.latest_version,
        )

    async def RejectPurchaseOrder(
        self, request: po_service_pb2.RejectPurchaseOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> po_service_pb2.RejectPurchaseOrderResponse:
        po_id = mapping.required_po_id(request.po_id)
        reason = mapping.required_text(request.reason, "reason", "the ERP's reason")
        caller = current_caller().system
        outcome = await self._run(po_id, domain.RejectVersion(po_id, request.version, reason, caller), context)
        exception = await self._exceptions.raise_exception(
            exception_pb2.EXCEPTION_TYPE_ERP_REJECTED,
            exception_pb2.SEVERITY_HIGH,
            types_pb2.ObjectRef(object_type=domain.OBJECT_TYPE, object_key=po_id, version=request.version),
            f"{caller} rejected version {request.version} of {po_id}: {reason}",
            workflow_key=po_id,
            discriminator=str(outcome.state.rejections[request.version]),
        )
        return po_service_pb2.RejectPurchaseOrderResponse(exception_id=exception.exception_id)

    async def ListUnacknowledgedPurchaseOrders(
        self,
        request: po_service_pb2.ListUnacknowledgedPurchaseOrdersRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> po_service_pb2.ListUnacknowledgedPurchaseOrdersResponse:
        size = page_size(request.page.page_size)
        cursor = decode_page_cursor(UNACKNOWLEDGED_LISTING, request.page.page_token)
        after = mapping.unacknowledged_cursor(cursor) if cursor is not None else None
        try:
            entries, following = await self._unacknowledged.page(after, size)
        except ReadModelRebuilding as rebuilding:
            raise Unavailable(str(rebuilding), reason="READ_MODEL_REBUILDING") from None
        token = encode_page_cursor(UNACKNOWLEDGED_LISTING, following) if following else ""
        return po_service_pb2.ListUnacknowledgedPurchaseOrdersResponse(
            purchase_orders=[mapping.unacknowledged_to_proto(entry) for entry in entries],
            page_info=types_pb2.PageInfo(next_page_token=token),
        )

    async def GetPurchaseOrder(
        self, request: po_service_pb2.GetPurchaseOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> po_service_pb2.GetPurchaseOrderResponse:
        po_id = mapping.required_po_id(request.po_id)
        state = await self._commands.state(po_id)
        if not state.exists:
            raise NotFound(f"purchase order {po_id!r} is unknown", reason="PO_NOT_FOUND")
        wanted = request.version or state.latest_version
        stored = state.version(wanted)
        if stored is None:
            raise NotFound(f"purchase order {po_id!r} has no version {wanted}", reason="PO_VERSION_NOT_FOUND")
        response = po_service_pb2.GetPurchaseOrderResponse(
            purchase_order=mapping.document_of(stored), latest_version=state.latest_version
        )
        highest = state.highest_acknowledgment()
        if highest is not None:
            response.erp_acknowledgment.CopyFrom(mapping.acknowledgment_to_proto(highest))
        return response

    async def ListPurchaseOrderVersions(
        self, request: po_service_pb2.ListPurchaseOrderVersionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> po_service_pb2.ListPurchaseOrderVersionsResponse:
        po_id = mapping.required_po_id(request.po_id)
        state = await self._commands.state(po_id)
        if not state.exists:
            raise NotFound(f"purchase order {po_id!r} is unknown", reason="PO_NOT_FOUND")
        return po_service_pb2.ListPurchaseOrderVersionsResponse(
            purchase_orders=[mapping.document_of(v) for v in state.versions]
        )

    def _received_of(self, po_id: str) -> domain.Received:
        """What was received on the order's lines; UNAVAILABLE while the receipt stream is still being read at
        start (a start that took longer than the follower waits serves before it is through): a change or
        cancellation decided on a partial view could lower a line below what was received."""
        if not self._receipts_caught_up():
            raise Unavailable(
                "received quantities are still being read from the receipt stream; retry shortly",
                reason="RECEIPTS_CATCHING_UP",
            )
        return self._received.of(po_id)

    def _version(
        self, document: po_pb2.PurchaseOrder, idempotency_key: str, *, change: bool
    ) -> tuple[domain.PurchaseOrder, str, str, str]:
        """A version request in the domain's terms: the order, its idempotency key (the caller's, else the
        natural one), its content fingerprint and the calling system; INVALID_ARGUMENT when it is not valid."""
        order = mapping.valid_order(
            document, idempotency_key, suppliers=self._suppliers, policy=self._policy(), change=change
        )
        caller = current_caller().system
        key = idempotency_key or domain.natural_idempotency_key(caller, order.po_id, order.version)
        _annotate_span(document, key)
        return order, key, content_sha256(document), caller

    async def _run(
        self,
        po_id: str,
        command: domain.OrderCommand,
        context: grpc.aio.ServicerContext[Any, Any] | None,
        *,
        assume_new: bool = False,
        claim: Claim | None = None,
    ) -> Result:
        policy = self._policy()
        rules = domain.Rules(hold_window=policy.out_of_order_hold)
        decide = partial(_decide, command, now=datetime.now(UTC), rules=rules)
        result = await self._commands.run(po_id, decide, assume_new=assume_new, claim=claim)
        if isinstance(result, Refusal):
            raise await self._refused(po_id, command, result, policy.revision)
        if result.replayed and context is not None:
            await context.send_initial_metadata(REPLAY_METADATA)
        return result

    async def _refused(self, po_id: str, command: domain.OrderCommand, refusal: Refusal, revision: int) -> ServiceError:
        version = domain.version_of(command)
        return await refused(
            refusal,
            exceptions=self._exceptions,
            object_ref=types_pb2.ObjectRef(object_type=domain.OBJECT_TYPE, object_key=po_id, version=version),
            render=_render,
            workflow_key=po_id,
            policy_revision=revision,
        )


def _decide(
    command: domain.OrderCommand, state: domain.OrderState, *, now: datetime, rules: domain.Rules
) -> domain.Decision:
    return domain.decide(command, state, now, rules)


def _render(document: object) -> str:
    if isinstance(document, po_pb2.PurchaseOrder):
        return json_format.MessageToJson(document, indent=None)
    return str(document)


def _annotate_span(order: po_pb2.PurchaseOrder, key: str) -> None:
    # The PO id is the workflow key; the server span's name already says what was done.
    trace.get_current_span().set_attributes(
        {
            attributes.WORKFLOW_KEY: order.po_id,
            attributes.OBJECT_VERSION: order.version,
            attributes.IDEMPOTENCY_KEY: key,
        }
    )
