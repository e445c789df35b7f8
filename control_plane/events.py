"""What the control plane consumes: every domain event (a write) and every audit record, to chain them."""

from __future__ import annotations

from control_plane.store import ControlPlaneStore
from libs.runtime.audit import entry_from_event
from libs.runtime.consumers import ConsumerSpec, Handler
from libs.runtime.events import StoredEvent

# Streams whose events are writes by a caller; exceptions are not (they are raised by syncgov).
AUDITED_DOMAINS = ("supplier", "po", "receipt", "invoice", "auditin")


def chain_event(store: ControlPlaneStore) -> Handler:
    async def handle(event: StoredEvent) -> None:
        await store.append_audit(entry_from_event(event))

    return handle


def audit_consumers(store: ControlPlaneStore) -> list[ConsumerSpec]:
    return [
        ConsumerSpec(f"control-plane-audit-{domain}", domain, f"{domain}.>", chain_event(store), batch=64)
        for domain in AUDITED_DOMAINS
    ]
