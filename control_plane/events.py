"""What the control plane consumes: every domain event (a write) and every audit record, to chain them."""

from __future__ import annotations

from control_plane.store import ControlPlaneStore
from libs.runtime.audit import entry_from_event
from libs.runtime.consumers import ConsumerSpec, Handler
from libs.runtime.events import StoredEvent
from libs.runtime.exception_reporter import DOMAIN as EXCEPTION_DOMAIN
from libs.runtime.exception_reporter import TRANSITION_EVENTS

# Streams whose events are writes by a caller. Of the exception stream, the transitions (a person acknowledged,
# resolved, replayed; the router opened, escalated, re-routed): raises are syncgov's own findings, not writes.
AUDITED_DOMAINS = ("supplier", "po", "receipt", "invoice", "auditin")


def chain_event(store: ControlPlaneStore) -> Handler:
    async def handle(event: StoredEvent) -> None:
        await store.append_audit(entry_from_event(event))

    return handle


def audit_consumers(store: ControlPlaneStore) -> list[ConsumerSpec]:
    transitions = ConsumerSpec(
        f"control-plane-audit-{EXCEPTION_DOMAIN}",
        EXCEPTION_DOMAIN,
        f"{EXCEPTION_DOMAIN}.*.{TRANSITION_EVENTS[0]}",
        chain_event(store),
        batch=64,
        filters=tuple(f"{EXCEPTION_DOMAIN}.*.{name}" for name in TRANSITION_EVENTS),
    )
    return [
        *(
            ConsumerSpec(f"control-plane-audit-{domain}", domain, f"{domain}.>", chain_event(store), batch=64)
            for domain in AUDITED_DOMAINS
        ),
        transitions,
    ]
