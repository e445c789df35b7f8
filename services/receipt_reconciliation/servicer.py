"""ReceiptReconciliationService: each handler translates the request, runs the command, translates the result.

The rules are in domain.py (decide/evolve); the loop around them is libs/runtime/commands.py."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import grpc
from google.protobuf import json_format
from opentelemetry import trace
from redis.exceptions import RedisError

from libs.policy.engine import Policy
from libs.runtime import attributes
from libs.runtime.commands import Claim
from libs.runtime.decider import Refusal
from libs.runtime.errors import FieldViolation, InvalidArgument, NotFound, Unavailable
from libs.runtime.events import content_sha256
from libs.runtime.exception_reporter import ExceptionReporter
from libs.runtime.identity import current_caller
from libs.runtime.paging import decode_page_cursor, encode_page_cursor, page_size
from libs.runtime.refusals import refused
from libs.runtime.subjects import MAX_KEY_CHARS
from libs.runtime.values import datetime_from_proto
from services.receipt_reconciliation import domain, mapping
from services.receipt_reconciliation.findings import FindingExceptions, document_ref
from services.receipt_reconciliation.orders import OrderBook
from services.receipt_reconciliation.store import FindingFilter, ReadModelRebuilding, ReceiptIndex, ReceivingCommands
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import exception_pb2
from syncgov.receipt.v1 import receipt_pb2, receipt_service_pb2, receipt_service_pb2_grpc

log = logging.getLogger(__name__)

REPLAY_METADATA = (("syncgov-idempotent-replay", "true"),)
FINDINGS_LISTING = "receipt.findings"


class ReceiptServicer(receipt_service_pb2_grpc.ReceiptReconciliationServiceServicer):
    def __init__(
        self,
        commands: ReceivingCommands,
        orders: OrderBook,
        index: ReceiptIndex,
        exceptions: ExceptionReporter,
        findings: FindingExceptions,
        policy: Callable[[], Policy],
    ) -> None:
        self._commands = commands
        self._orders = orders
        self._index = index
        self._exceptions = exceptions
        self._findings = findings
        self._policy = policy

    async def PostGoodsReceipt(
        self, request: receipt_service_pb2.PostGoodsReceiptRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> receipt_service_pb2.PostGoodsReceiptResponse:
        now = mapping.now()
        caller = current_caller().system
        policy = self._policy()
        document = mapping.normalized(request.receipt, caller)
        fingerprint = content_sha256(document)
        mapping.received_now_unless_dated(document, now)
        receipt = mapping.valid_receipt(document, now)
        _check_site(receipt.site_id, policy)
        # The document's own key is the broker's message id whatever key the caller chose: within the broker's
        # duplicate window one document id cannot land on two orders, even at the same instant or while the index
        # is being rebuilt. A caller's key is a claim beside it, scoped to the caller's system.
        key = domain.natural_idempotency_key(caller, receipt.receipt_id)
        trace.get_current_span().set_attributes(
            {attributes.WORKFLOW_KEY: receipt.po_id, attributes.IDEMPOTENCY_KEY: request.idempotency_key or key}
        )
        command = domain.PostReceipt(receipt, document, fingerprint, key, await self._recorded_against(receipt))
        order = await self._orders.current(receipt.po_id)
        rules = domain.Rules(
            over_receipt_percent=lambda unit: policy.tolerance(unit).over_receipt_percent,
            unit_factor=policy.unit_factor,
        )
        claim = Claim(f"{caller}:{request.idempotency_key}", fingerprint) if request.idempotency_key else None
        decide = partial(_decide, command, order=order, rules=rules)
        result = await self._commands.run(receipt.po_id, decide, assume_new=True, claim=claim)
        if isinstance(result, Refusal):
            raise await refused(
                result,
                exceptions=self._exceptions,
                object_ref=document_ref(receipt),
                render=_render,
                workflow_key=receipt.po_id,
                policy_revision=policy.revision,
            )
        posted = result.state.documents[receipt.key]
        if result.replayed:
            # The first answer may have been lost before its projection ran: this document, not the whole order.
            await self._index.replayed(posted.event, posted.sequence)
            await context.send_initial_metadata(REPLAY_METADATA)
        # Raised after the append, on a replay too: the ids are derived from the document, so a crash in between
        # is mended by the caller's retry (or the start-up tail) and a repeat stores nothing twice.
        await self._findings.raise_for(posted.event, order)
        return mapping.post_response(posted.event)

    async def GetGoodsReceipt(
        self, request: receipt_service_pb2.GetGoodsReceiptRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> receipt_service_pb2.GetGoodsReceiptResponse:
        system = mapping.required(request.source_system, "source_system")
        receipt_id = mapping.required(request.receipt_id, "receipt_id")
        key = domain.document_key(system, receipt_id)
        try:
            po_id = await self._index.order_of(key)
        except ReadModelRebuilding as rebuilding:
            raise Unavailable(str(rebuilding), reason="READ_MODEL_REBUILDING") from None
        posted = (await self._commands.state(po_id)).documents.get(key) if po_id is not None else None
        if posted is None:
            raise NotFound(f"{system} posted no document {receipt_id!r}", reason="RECEIPT_NOT_FOUND")
        return mapping.document_response(posted.event)

    async def GetPurchaseOrderReceiptStatus(
        self,
        request: receipt_service_pb2.GetPurchaseOrderReceiptStatusRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> receipt_service_pb2.GetPurchaseOrderReceiptStatusResponse:
        po_id = mapping.required(request.po_id, "po_id")
        if len(po_id) > MAX_KEY_CHARS:
            raise InvalidArgument(
                "po_id is too long", violations=[FieldViolation("po_id", f"must be at most {MAX_KEY_CHARS} characters")]
            )
        state = await self._commands.state(po_id)
        order = await self._orders.current(po_id)
        if order is None and not state.exists:
            raise NotFound(
                f"purchase order {po_id!r} is unknown and nothing was received against it", reason="PO_NOT_FOUND"
            )
        return mapping.status_response(state, order, self._policy().unit_factor)

    async def ListReceiptsWithFindings(
        self,
        request: receipt_service_pb2.ListReceiptsWithFindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> receipt_service_pb2.ListReceiptsWithFindingsResponse:
        where = _finding_filter(request)
        size = page_size(request.page.page_size)
        cursor = decode_page_cursor(FINDINGS_LISTING, request.page.page_token)
        after = _cursor(cursor) if cursor is not None else None
        try:
            listed, following = await self._index.page(after, size, where)
        except ReadModelRebuilding as rebuilding:
            raise Unavailable(str(rebuilding), reason="READ_MODEL_REBUILDING") from None
        token = encode_page_cursor(FINDINGS_LISTING, "|".join(following)) if following else ""
        return receipt_service_pb2.ListReceiptsWithFindingsResponse(
            receipts=[_listed_to_proto(entry) for entry in listed],
            page_info=types_pb2.PageInfo(next_page_token=token),
        )

    async def _recorded_against(self, receipt: domain.Receipt) -> str | None:
        """The order the document id is recorded against already, as far as the index knows. Valkey is a
        cache here: without it the broker's duplicate window still catches a reuse within two minutes."""
        try:
            return await self._index.order_of(receipt.key)
        except (ReadModelRebuilding, RedisError) as error:
            log.warning("receipt index not consulted for %s (%s); the stream's window decides", receipt.key, error)
            return None


def _decide(
    command: domain.PostReceipt,
    state: domain.ReceivingState,
    *,
    order: domain.OrderView | None,
    rules: domain.Rules,
) -> domain.Reconciled | Refusal | None:
    return domain.decide(command, state, order, rules)


def _check_site(site_id: str, policy: Policy) -> None:
    """A site no system declares is a typo, not a warehouse (serving it is checked at the edge)."""
    if policy.sites and site_id not in policy.sites:
        known = ", ".join(sorted(policy.sites))
        raise InvalidArgument(
            f"site {site_id!r} is not a site the policy knows ({known}); nothing was recorded",
            violations=[FieldViolation("receipt.site_id", f"{site_id!r} is not a site the policy knows ({known})")],
            reason="UNKNOWN_SITE",
        )


def _render(document: object) -> str:
    if isinstance(document, receipt_pb2.GoodsReceipt):
        return json_format.MessageToJson(document, indent=None)
    return str(document)


def _finding_filter(request: receipt_service_pb2.ListReceiptsWithFindingsRequest) -> FindingFilter:
    finding = ""
    if request.finding != exception_pb2.EXCEPTION_TYPE_UNSPECIFIED:
        finding = mapping.finding_name(request.finding)
        if finding not in domain.FINDING_TYPES:
            names = ", ".join(f"EXCEPTION_TYPE_{name.upper()}" for name in domain.FINDING_TYPES)
            raise InvalidArgument(
                f"{exception_pb2.ExceptionType.Name(request.finding)} is not a receipt finding",
                violations=[FieldViolation("finding", f"must be one of {names}, or unspecified for any")],
                reason="NOT_A_RECEIPT_FINDING",
            )
    before = datetime_from_proto(request.posted_before) if request.HasField("posted_before") else None
    return FindingFilter(site_id=request.site_id, finding=finding, posted_before=before)


def _cursor(cursor: str) -> tuple[str, str]:
    score, separator, member = cursor.partition("|")
    # ASCII digits only: str.isdigit() accepts '²' and other scripts' digits, which Valkey's tonumber() does not.
    if not separator or not (score.isascii() and score.isdigit() and len(score) <= 20) or not member:
        message = "page_token is not a page token this server issued"
        raise InvalidArgument(
            message, violations=[FieldViolation("page.page_token", message)], reason="INVALID_PAGE_TOKEN"
        )
    return score, member


def _listed_to_proto(entry: Any) -> receipt_service_pb2.ReceiptWithFindings:
    system, _, receipt_id = entry.document_key.partition("/")
    return receipt_service_pb2.ReceiptWithFindings(
        source_system=system,
        receipt_id=receipt_id,
        po_id=entry.po_id,
        site_id=entry.site_id,
        kind=mapping.kind_to_proto(domain.Kind(entry.kind)),
        posted_at=mapping.posted_at(entry.posted_at_ns),
        findings=[mapping.finding_to_proto(finding) for finding in entry.findings],
    )
