"""control-plane's composition root."""

from __future__ import annotations

from control_plane.events import audit_consumers
from control_plane.servicer import ControlPlaneServicer
from control_plane.settings import Settings
from control_plane.store import ControlPlaneStore, policy_commands
from control_plane.workflows import INDEXED_DOMAINS, WorkflowIndex, Workflows
from libs.runtime.access import AccessRule, Administer, Read
from libs.runtime.app import GrpcService, Runtime, Service
from libs.runtime.audit import AuditChain
from libs.runtime.follower import StreamFollower
from libs.runtime.streams import ALL_STREAMS
from syncgov.controlplane.v1 import controlplane_service_pb2, controlplane_service_pb2_grpc

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
    "ReportSystemState": Read("policy"),
    "QueryAuditTrail": Read("audit"),
}


def wire(rt: Runtime[Settings]) -> Service:
    store = ControlPlaneStore(rt.policy_store, AuditChain(rt.js, rt.namespace, rt.settings.publish_timeout_seconds))
    index = WorkflowIndex.empty()
    followers = [StreamFollower(rt.js, rt.namespace, domain, index.follower(domain)) for domain in INDEXED_DOMAINS]
    servicer = ControlPlaneServicer(
        store, policy_commands(rt.policy_store), rt.policy, rt.audit, Workflows(rt.reader, index)
    )
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
        startup=[follower.start for follower in followers],
    )
