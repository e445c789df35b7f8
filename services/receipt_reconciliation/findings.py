"""Raising the exceptions a posting's findings name: after the append, on a replay, and again at start for the
newest events (a process that died between the append and the raise, with a caller that never retried, left at
most those unraised). The ids are derived from the document, so raising again stores nothing twice."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf import json_format

from libs.policy.engine import Policy
from libs.runtime.exception_reporter import ExceptionReporter, severity
from services.receipt_reconciliation import domain, mapping
from services.receipt_reconciliation.orders import OrderBook
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import exception_pb2


def document_ref(receipt: domain.Receipt) -> types_pb2.ObjectRef:
    return types_pb2.ObjectRef(object_type=domain.OBJECT_TYPE, object_key=receipt.key, version=receipt.po_version)


class FindingExceptions:
    def __init__(self, exceptions: ExceptionReporter, orders: OrderBook, policy: Callable[[], Policy]) -> None:
        self._exceptions = exceptions
        self._orders = orders
        self._policy = policy

    async def raise_for(self, posted: domain.Reconciled, order: domain.OrderView | None = None) -> None:
        """One exception per finding type of the document, routed by its site and the order's business unit."""
        if not posted.findings:
            return
        receipt = posted.receipt
        if order is None:
            order = await self._orders.current(receipt.po_id)
        policy = self._policy()
        business_unit = order.business_unit if order is not None else ""
        evidence = [json_format.MessageToJson(posted.document, indent=None)]
        for exception_id, finding_type, detail in domain.exceptions_of(posted.findings):
            route = policy.route(finding_type, site=receipt.site_id, business_unit=business_unit)
            await self._exceptions.raise_exception(
                mapping.finding_type(finding_type),
                severity(route.severity, default=exception_pb2.SEVERITY_MEDIUM),
                document_ref(receipt),
                detail,
                evidence=evidence,
                workflow_key=receipt.po_id,
                discriminator=receipt.key,
                policy_revision=policy.revision,
                exception_id=exception_id,
                site_id=receipt.site_id,
                business_unit=business_unit,
            )
