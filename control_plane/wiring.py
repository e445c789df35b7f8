"""control-plane's composition root."""

from __future__ import annotations

import logging
from collections.abc import Callable

from opentelemetry.metrics import Meter

from control_plane.events import audit_consumers
from control_plane.reconciliation import OrderIndex, drift_reconciler
from control_plane.servicer import ControlPlaneServicer
from control_plane.settings import Settings
from control_plane.store import ControlPlaneStore, policy_commands
from control_plane.tracker import WorkflowTracker
from control_plane.web import WebView
from control_plane.workflows import WorkflowIndex, Workflows
from libs.runtime.access import AccessRule, Administer, Read, ReportHoldings
from libs.runtime.app import GrpcService, Runtime, Service
from libs.runtime.audit import AuditChain
from libs.runtime.events import StoredEvent
from libs.runtime.follower import StreamFollower
from libs.runtime.metrics import PolledGauges, Values
from libs.runtime.streams import ALL_STREAMS
from syncgov.controlplane.v1 import controlplane_service_pb2, controlplane_service_pb2_grpc

log = logging.getLogger(__name__)

ACCESS: dict[str, AccessRule] = {
    "ValidatePolicy": Read("policy"),
    "DiffPolicy": Read("policy"),
    "ApplyPolicy": Administer(),
    "GetPolicy": Read("policy"),
    "ListPolicyRevisions": Read("policy"),
    "RollbackPolicy": Administer(),
    "ExplainOwnership": Read("policy"),
    "GetWorkflow": Read("purchase_order"),
    "ListStuckWorkflows": Read("purchase_order"),
    "ReportSystemState": ReportHoldings("purchase_order", system="system"),
    "QueryAuditTrail": Read("audit"),
}


def wire(rt: Runtime[Settings]) -> Service:
    store = ControlPlaneStore(rt.policy_store, AuditChain(rt.js, rt.namespace, rt.settings.publish_timeout_seconds))
    index = WorkflowIndex.empty()
    tracker = WorkflowTracker(rt.exceptions, rt.policy, rt.settings.service_name)
    orders = OrderIndex()
    # One follower per stream, feeding everything that reads it: the workflow tracker, the timeline's index of
    # invoices and raises, the order index drift compares against.
    followers: dict[str, StreamFollower] = {}
    drift = drift_reconciler(
        rt, orders, caught_up=lambda: followers["po"].caught_up and followers["exception"].caught_up
    )
    handlers: dict[str, list[Callable[[StoredEvent], None]]] = {
        "po": [tracker.on_po, orders.follow],
        "receipt": [tracker.on_receipt],
        "invoice": [index.follower("invoice"), tracker.on_invoice],
        "exception": [index.follower("exception"), tracker.on_exception, drift.on_exception],
    }
    for domain, each in handlers.items():
        followers[domain] = StreamFollower(rt.js, rt.namespace, domain, both(*each))
        tracker.waits_for(followers[domain])
    servicer = ControlPlaneServicer(
        store, policy_commands(rt.policy_store), rt.policy, rt.audit, Workflows(rt.reader, index), tracker, drift
    )
    gauges = workflow_gauges(rt.telemetry.meter, tracker)
    # The local web view, if a port is set: listening before the service answers, closed when it stops.
    port = rt.settings.web_port
    web = None if port is None else WebView(tracker, servicer.GetWorkflow, rt.settings.grpc_host, port)
    return Service(
        grpc_services=[
            GrpcService(
                controlplane_service_pb2.DESCRIPTOR.services_by_name["ControlPlaneService"],
                controlplane_service_pb2_grpc.add_ControlPlaneServiceServicer_to_server,
                servicer,
                access=ACCESS,
            )
        ],
        consumers=audit_consumers(store),
        streams=ALL_STREAMS,
        # Which invoices and exceptions belong to which workflow, read from their streams before serving.
        startup=[
            *(follower.start for follower in followers.values()),
            gauges.refresh,
            *([] if web is None else [web.start]),
        ],
        periodic=[(rt.settings.sla_sweep_seconds, tracker.sweep), gauges.periodic],
        background=[] if web is None else [web.serve],
    )


def both(*handlers: Callable[[StoredEvent], None]) -> Callable[[StoredEvent], None]:
    """One follower's handler feeding several read models, each in stream order; an event one of them cannot take
    is logged and still reaches the others."""

    def handle(stored: StoredEvent) -> None:
        for handler in handlers:
            try:
                handler(stored)
            except Exception:
                log.exception("%s:%s not taken by %s; skipped", stored.stream, stored.sequence, handler)

    return handle


def workflow_gauges(meter: Meter, tracker: WorkflowTracker) -> PolledGauges:
    """Workflows by state, and the stages waiting (and past their SLA), from the tracker every replica folds."""
    gauges = PolledGauges(meter)

    async def by_state() -> Values:
        return [(float(count), {"state": state}) for state, count in tracker.counts().items()]

    stages: list[dict[str, tuple[int, int]]] = [{}]

    async def waiting() -> Values:
        stages[0] = tracker.waiting_by_stage()
        return [(float(waits), {"stage": stage}) for stage, (waits, _late) in stages[0].items()]

    async def late() -> Values:
        return [(float(late), {"stage": stage}) for stage, (_waits, late) in stages[0].items()]

    gauges.gauge(
        "syncgov.workflows", unit="{workflow}", description="PO workflows by state", source=by_state, labelled=True
    )
    gauges.gauge(
        "syncgov.workflows.waiting",
        unit="{stage}",
        description="Workflow stages not completed, by stage",
        source=waiting,
        labelled=True,
    )
    gauges.gauge(
        "syncgov.workflows.stuck",
        unit="{stage}",
        description="Workflow stages waiting past the policy's SLA, by stage",
        source=late,
        labelled=True,
    )
    return gauges
