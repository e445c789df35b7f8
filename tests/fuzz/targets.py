"""What the fuzz runs against: every built component, every RPC it serves, and seeds that reach deep.

Components come from ``libs.cli.components`` (those whose package exists); a component's gRPC
services are the ``syncgov.*.v1.*_service_pb2`` modules its ``wiring`` imports, and its RPCs are their
descriptors' methods. A new component or RPC is therefore fuzzed without a change here: it gets
descriptor-built requests (and an empty seed). The seeds below only make the fuzz reach deeper into
the services that exist: valid requests naming objects that exist, each then mutated in one place, and for
receipt-reconciliation (tests/fuzz/receipts.py) and invoice-status (tests/fuzz/invoices.py) orders published
through po-publication first (and, for invoices, receipts posted through receipt-reconciliation) and a
structured strategy per RPC beside the descriptor-built one.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from libs.cli.components import COMPONENTS, Component, existing_components
from libs.runtime.access import Administer, Read, Report, Write
from libs.runtime.settings import DEFAULT_POLICY_FILE, RuntimeSettings

DEFAULT_POLICY_TEXT = Path(DEFAULT_POLICY_FILE).read_text()

# Systems every RPC is also called as: unknown ones, odd spellings, and no header at all (None).
ODD_SYSTEMS: tuple[str | None, ...] = (None, "", "unknown-system", "ERP", "procurement ", "erp,procurement", "*", "..")


@dataclass(frozen=True)
class Rpc:
    component: str
    service: ServiceDescriptor
    method: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.service.full_name}/{self.method.name}"

    @property
    def name(self) -> str:
        return f"{self.component}/{self.method.name}"

    def request_class(self) -> type[Message]:
        return GetMessageClass(self.method.input_type)

    def response_class(self) -> type[Message]:
        return GetMessageClass(self.method.output_type)


def _service_modules(wiring: ModuleType) -> list[ModuleType]:
    return [
        value
        for value in vars(wiring).values()
        if isinstance(value, ModuleType)
        and value.__name__.startswith("syncgov.")
        and value.__name__.endswith("_service_pb2")
    ]


def services_of(component: Component) -> list[ServiceDescriptor]:
    """The gRPC services a component serves: those of the *_service_pb2 modules its wiring imports."""
    wiring = importlib.import_module(f"{component.module}.wiring")
    found = {
        service.full_name: service
        for module in _service_modules(wiring)
        for service in module.DESCRIPTOR.services_by_name.values()
    }
    return [found[name] for name in sorted(found)]


def fuzzed_components() -> list[Component]:
    """Every component with a composition root: those that run (a ``__main__``) and those built but not yet
    started by ``syncgov up`` (invoice-status runs in the integration tests before its ``__main__`` lands)."""
    started = {component.name for component in existing_components()}
    return [component for component in COMPONENTS if component.name in started or _has_wiring(component)]


def _has_wiring(component: Component) -> bool:
    try:
        importlib.import_module(f"{component.module}.wiring")
    except ModuleNotFoundError:
        return False
    return True


def all_rpcs() -> list[Rpc]:
    return [
        Rpc(component.name, service, method)
        for component in fuzzed_components()
        for service in services_of(component)
        for method in service.methods
    ]


def access_rules(component: Component) -> Mapping[str, Any]:
    return getattr(importlib.import_module(f"{component.module}.wiring"), "ACCESS", {})


def preferred_systems(rule: Any, policy: Any) -> list[str]:
    """The systems the policy lets make this call, so most calls pass the edge and reach the domain."""
    if isinstance(rule, Write | Report):
        writers: set[str] = set()
        try:
            ownership = policy.document.ownership[rule.object_type]
        except KeyError:
            return sorted(policy.systems)
        writers.update(ownership.writers or (ownership.system_of_record,))
        for field_rule in ownership.fields.values():
            writers.update(field_rule.writers or (field_rule.system_of_record,))
        return sorted(writers)
    if isinstance(rule, Administer):
        return sorted(policy.document.administrators)
    if isinstance(rule, Read):
        return sorted(policy.systems)
    return sorted(policy.systems)


# -- seeds ---------------------------------------------------------------------------------------------

Call = Callable[[str, Message, str], Awaitable[Message]]


@dataclass
class Seeds:
    """Valid requests by request message full name, plausible values by field name, structured strategies by
    request message full name (drawn as often as the descriptor-built requests), and the systems an RPC is
    mostly called as by method name (instead of the writers the policy names)."""

    requests: dict[str, list[Message]] = field(default_factory=dict)
    plausible: dict[str, list[str]] = field(default_factory=dict)
    strategies: dict[str, list[st.SearchStrategy[Message]]] = field(default_factory=dict)
    systems: dict[str, list[str]] = field(default_factory=dict)

    def add(self, *messages: Message) -> None:
        for message in messages:
            self.requests.setdefault(message.DESCRIPTOR.full_name, []).append(message)


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC).replace(microsecond=0))
    return stamp


async def _ignore_refusal(call: Call, path: str, request: Message, system: str) -> Message | None:
    try:
        return await call(path, request, system)
    except grpc.aio.AioRpcError:
        return None


async def before_po_publication(settings: RuntimeSettings) -> None:
    from tests.integration.helpers import seed_supplier

    await seed_supplier(settings.nats_url, settings.namespace, "SUP-ACME")


async def seed_po_publication(call: Call) -> Seeds:
    from syncgov.po.v1 import po_service_pb2 as pb
    from tests.integration.helpers import sample_order

    def order(po_id: str, version: int = 1, quantity: str = "10") -> Any:
        built = sample_order(po_id, quantity=quantity)
        built.version = version
        return built

    service = "/syncgov.po.v1.PurchaseOrderService/"
    for po_id in ("PO-FZ-1", "PO-FZ-2", "PO-FZ-3"):
        await call(
            service + "PublishPurchaseOrder", pb.PublishPurchaseOrderRequest(purchase_order=order(po_id)), "procurement"
        )
    await call(
        service + "ChangePurchaseOrder",
        pb.ChangePurchaseOrderRequest(purchase_order=order("PO-FZ-2", 2, "12")),
        "procurement",
    )
    await call(
        service + "AcknowledgePurchaseOrder",
        pb.AcknowledgePurchaseOrderRequest(po_id="PO-FZ-3", version=1, erp_document_number="4500000003"),
        "erp",
    )
    seeds = Seeds(plausible={"po_id": ["PO-FZ-1", "PO-FZ-2", "PO-FZ-3", "PO-FZ-NEW", "PO-FZ-9"]})
    seeds.add(
        pb.PublishPurchaseOrderRequest(purchase_order=order("PO-FZ-NEW")),
        pb.PublishPurchaseOrderRequest(purchase_order=order("PO-FZ-1"), idempotency_key="fz-publish-1"),
        pb.ChangePurchaseOrderRequest(purchase_order=order("PO-FZ-1", 2, "11")),
        pb.ChangePurchaseOrderRequest(purchase_order=order("PO-FZ-2", 4, "14")),  # ahead: held
        pb.CancelPurchaseOrderRequest(po_id="PO-FZ-9", version=2, reason="no longer needed"),
        pb.AcknowledgePurchaseOrderRequest(
            po_id="PO-FZ-1", version=1, erp_document_number="4500000001", acknowledged_at=_now()
        ),
        pb.AcknowledgePurchaseOrderRequest(po_id="PO-FZ-2", version=2, erp_document_number="4500000002"),
        pb.RejectPurchaseOrderRequest(po_id="PO-FZ-1", version=1, reason="unknown item"),
        pb.GetPurchaseOrderRequest(po_id="PO-FZ-2"),
        pb.GetPurchaseOrderRequest(po_id="PO-FZ-2", version=1),
        pb.ListPurchaseOrderVersionsRequest(po_id="PO-FZ-2"),
        pb.ListUnacknowledgedPurchaseOrdersRequest(),
    )
    from syncgov.common.v1 import types_pb2

    seeds.add(pb.ListUnacknowledgedPurchaseOrdersRequest(page=types_pb2.PageRequest(page_size=1)))
    return seeds


async def seed_supplier_normalization(call: Call) -> Seeds:
    from syncgov.common.v1 import types_pb2
    from syncgov.supplier.v1 import supplier_pb2
    from syncgov.supplier.v1 import supplier_service_pb2 as pb

    def record(system: str, local_id: str, name: str, vat: str, iban: str = "") -> Any:
        return supplier_pb2.SupplierRecord(
            source_system=system,
            local_id=local_id,
            legal_name=name,
            tax_ids=[supplier_pb2.TaxIdentifier(scheme="vat", value=vat, country_code="DE")],
            addresses=[
                types_pb2.PostalAddress(
                    lines=["Hafenstrasse 1"], locality="Hamburg", postal_code="20457", country_code="DE"
                )
            ],
            contacts=[supplier_pb2.Contact(name="A. Buyer", email="buyer@example.com", phone="+49 40 123456")],
            bank_accounts=[supplier_pb2.BankAccount(iban=iban)] if iban else [],
            payment_terms="NET30" if system == "erp" else "",
            source_version=1,
        )

    service = "/syncgov.supplier.v1.SupplierNormalizationService/"
    acme = record("procurement", "P-1", "ACME Industrial Supply GmbH", "DE136695976")
    other = record("procurement", "P-2", "Nordwind Logistik AG", "DE811569869")
    ids: list[str] = []
    for rec in (acme, other):
        answer: Any = await call(
            service + "SubmitSupplierRecord", pb.SubmitSupplierRecordRequest(record=rec), "procurement"
        )
        ids.append(answer.supplier.supplier_id)
    erp = record("erp", "100234", "Acme Industrial Supply G.m.b.H.", "de136695976", "DE89370400440532013000")
    seeds = Seeds(
        plausible={
            "supplier_id": ids,
            "surviving_supplier_id": ids,
            "merged_supplier_id": ids,
            "other_supplier_id": ids,
            "local_id": ["P-1", "P-2", "P-3", "100234"],
        }
    )
    seeds.add(
        pb.SubmitSupplierRecordRequest(record=acme),
        pb.SubmitSupplierRecordRequest(record=record("procurement", "P-3", "Fuzz Werke GmbH", "DE282741168")),
        pb.SubmitSupplierRecordRequest(record=erp, idempotency_key="fz-erp-1"),
        pb.GetSupplierRequest(supplier_id=ids[0]),
        pb.ResolveSupplierRequest(system="procurement", local_id="P-1"),
        pb.FindDuplicateSuppliersRequest(record=acme),
        pb.MergeSuppliersRequest(surviving_supplier_id=ids[0], merged_supplier_id=ids[1], reason="same company"),
        pb.ChangeSupplierStatusRequest(supplier_id=ids[1], status=supplier_pb2.SUPPLIER_STATUS_BLOCKED, reason="fuzz"),
        pb.ListDuplicateCandidatesRequest(page_size=10),
        pb.DecideDuplicateCandidateRequest(
            supplier_id=ids[0], other_supplier_id=ids[1], same_supplier=False, reason="x"
        ),
    )
    return seeds


async def seed_control_plane(call: Call) -> Seeds:
    from syncgov.common.v1 import types_pb2
    from syncgov.controlplane.v1 import controlplane_pb2
    from syncgov.controlplane.v1 import controlplane_service_pb2 as pb

    policy = DEFAULT_POLICY_TEXT
    seeds = Seeds(plausible={"document_yaml": [policy], "workflow_key": ["PO-FZ-1", "PO-1001"]})
    seeds.add(
        pb.ValidatePolicyRequest(document_yaml=policy),
        pb.DiffPolicyRequest(document_yaml=policy.replace("NET30", "NET45")),
        pb.ApplyPolicyRequest(document_yaml=policy, expected_revision=0, dry_run=True, comment="fuzz"),
        pb.ApplyPolicyRequest(document_yaml=policy + "\n# fuzz\n", expected_revision=0, comment="fuzz"),
        pb.GetPolicyRequest(revision=0),
        pb.ListPolicyRevisionsRequest(page=types_pb2.PageRequest(page_size=2)),
        pb.RollbackPolicyRequest(target_revision=0, expected_revision=1, comment="fuzz"),
        pb.ExplainOwnershipRequest(object_type="purchase_order", field="lines[].unit_price"),
        pb.GetWorkflowRequest(workflow_key="PO-FZ-1"),
        pb.ListStuckWorkflowsRequest(page=types_pb2.PageRequest(page_size=5)),
        pb.ReportSystemStateRequest(
            system="erp",
            objects=[
                controlplane_pb2.SystemObjectState(
                    object=types_pb2.ObjectRef(object_type="purchase_order", object_key="PO-FZ-1", version=1),
                    content_sha256="00" * 32,
                )
            ],
        ),
        pb.QueryAuditTrailRequest(object_type="purchase_order", object_key="PO-FZ-1"),
    )
    return seeds


async def before_receipt_reconciliation(settings: RuntimeSettings) -> None:
    from tests.fuzz import receipts

    await receipts.before_start(settings)


async def seed_receipt_reconciliation(call: Call) -> Seeds:
    from tests.fuzz import receipts

    seeds: Seeds = await receipts.seed(call)
    return seeds


async def before_invoice_status(settings: RuntimeSettings) -> None:
    from tests.fuzz import invoices

    await invoices.before_start(settings)


async def seed_invoice_status(call: Call) -> Seeds:
    from tests.fuzz import invoices

    seeds: Seeds = await invoices.seed(call)
    return seeds


SETTLE_SECONDS = 30.0


async def settle_consumers(settings: RuntimeSettings, js: Any) -> None:
    """Wait until every durable consumer of the namespace (invoice-status's re-match consumers, the exception
    router's intake) has read and acknowledged everything: after that no background work on the seeds appends while
    the fuzz checks a refused request for writes."""
    from nats.js.errors import NotFoundError

    from libs.runtime.streams import ALL_STREAMS
    from libs.runtime.subjects import Namespace

    namespace = Namespace(settings.namespace)
    deadline = asyncio.get_running_loop().time() + SETTLE_SECONDS
    while True:
        pending: dict[str, int] = {}
        for spec in ALL_STREAMS:
            try:
                consumers = await js.consumers_info(namespace.stream(spec.domain))
            except NotFoundError:
                continue
            for info in consumers:
                if info.config.durable_name:
                    pending[info.name] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        if not any(pending.values()):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"consumers still have events to process: {pending}")
        await asyncio.sleep(0.05)


async def before_exception_router(settings: RuntimeSettings) -> None:
    from tests.fuzz import exceptions

    await exceptions.before_start(settings)


async def seed_exception_router(call: Call) -> Seeds:
    from tests.fuzz import exceptions

    seeds: Seeds = await exceptions.seed(call)
    return seeds


@dataclass(frozen=True)
class Preparation:
    # Runs with the settings the component will start with (its namespace, NATS and Valkey), before it starts.
    before_start: Callable[[RuntimeSettings], Awaitable[None]] | None = None
    seeds: Callable[[Call], Awaitable[Seeds]] | None = None
    # Runs after the seeds, with the settings and a JetStream context: waits until the component's background
    # work on what was seeded is done, so none of it lands while a refused request is checked for writes.
    settle: Callable[[RuntimeSettings, Any], Awaitable[None]] | None = None


# Deeper seeds for the components that have them; any other component is fuzzed from descriptors alone.
PREPARATIONS: dict[str, Preparation] = {
    "po-publication": Preparation(before_po_publication, seed_po_publication),
    "supplier-normalization": Preparation(None, seed_supplier_normalization),
    "control-plane": Preparation(None, seed_control_plane),
    "receipt-reconciliation": Preparation(before_receipt_reconciliation, seed_receipt_reconciliation),
    "invoice-status": Preparation(before_invoice_status, seed_invoice_status, settle_consumers),
    "exception-router": Preparation(before_exception_router, seed_exception_router, settle_consumers),
}

# Settings the fuzz overrides where a component has them: no periodic sweep may write while a refused
# request is being checked for writes.
QUIET_SETTINGS: dict[str, object] = {"hold_sweep_seconds": 86_400.0, "sweep_seconds": 3_600.0}
