"""``python -m tests.integration.stuck_shutdown``: invoice-status whose re-match of orders never finishes a message,
so its shutdown waits on it for ever (test_graceful_shutdown's deadline test runs it as a process)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from libs.runtime.app import Runtime, Service, run
from libs.runtime.consumers import ConsumerSpec
from libs.runtime.events import StoredEvent
from services.invoice_status.settings import Settings
from services.invoice_status.wiring import wire

HANDLING = "handling an order event for ever"


async def never_finishes(stored: StoredEvent) -> None:
    logging.getLogger(__name__).warning("%s: %s", HANDLING, stored.subject)
    await asyncio.Event().wait()


def stuck_wire(rt: Runtime[Settings]) -> Service:
    stuck = ConsumerSpec("invoice-status-rematch-orders", "po", "po.>", never_finishes)
    return dataclasses.replace(wire(rt), consumers=[stuck])


if __name__ == "__main__":
    run(Settings, stuck_wire)
