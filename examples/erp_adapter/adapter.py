"""An ERP adapter for syncgov purchase orders: the pattern to copy for SAP, Dynamics or Odoo.

    python -m examples.erp_adapter.adapter --nats-url nats://127.0.0.1:4222 --po-addr 127.0.0.1:50052

It reads purchase order versions from a durable JetStream pull consumer, applies each to the ERP
(here an in-memory stand-in; replace ``ErpClient.apply`` with your BAPI, OData or XML-RPC call),
and acknowledges *that version* through ``PurchaseOrderService.AcknowledgePurchaseOrder`` — or
rejects it with the ERP's reason. What makes it safe:

* **Order per PO.** One durable consumer, ``max_ack_pending=1``: the next version is not delivered
  until this one is acknowledged, so v3 can never overtake v2. (For more throughput, run one
  consumer per partition of PO keys; JetStream subject-mapping partitions keep each PO in one.)
* **Idempotent.** A redelivered version the ERP already holds is not applied twice, only
  acknowledged again (the acknowledgment itself is idempotent in syncgov).
* **Nothing dropped.** A version the ERP cannot take is rejected with its reason (syncgov raises an
  ``erp_rejected`` exception for a person); a transient failure is nak'ed with a delay and retried.
* **One trace per order.** The acknowledgment (or rejection) carries the W3C trace context the PO
  event brought in its NATS headers (``traceparent``, ``tracestate``) as gRPC metadata, so the
  ERP's answer joins the trace of the publication it answers (see the README's "Tracing"). An
  adapter with its own OpenTelemetry tracer would start its span from that context and inject its
  own; this one has none, and passes the context on as it came.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import grpc
import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from syncgov.common.v1 import envelope_pb2
from syncgov.po.v1 import events_pb2, po_pb2, po_service_pb2, po_service_pb2_grpc

log = logging.getLogger("erp-adapter")
# The W3C trace context headers a syncgov event carries, passed on to the call that answers it.
TRACE_HEADERS = ("traceparent", "tracestate")
DOCUMENT_EVENTS = {
    "syncgov.po.v1.PurchaseOrderPublished": events_pb2.PurchaseOrderPublished,
    "syncgov.po.v1.PurchaseOrderChanged": events_pb2.PurchaseOrderChanged,
    "syncgov.po.v1.PurchaseOrderCancelled": events_pb2.PurchaseOrderCancelled,
}


def answering(headers: dict[str, str] | None, metadata: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The call metadata of the answer to a message: the adapter's own, and the trace context the message carried."""
    carried = tuple((key, headers[key]) for key in TRACE_HEADERS if headers and key in headers)
    return (*metadata, *carried)


class ErpRefused(Exception):
    """The ERP will not take this version (a business reason, not an outage)."""


@dataclass
class ErpClient:
    """Stand-in for the ERP: replace ``apply`` with the real call. Keeps what it holds per PO."""

    held: dict[str, po_pb2.PurchaseOrder] = field(default_factory=dict)
    numbers: dict[str, str] = field(default_factory=dict)

    def version_held(self, po_id: str) -> int:
        return self.held[po_id].version if po_id in self.held else 0

    async def apply(self, order: po_pb2.PurchaseOrder) -> str:
        """Create or change the order in the ERP; returns the ERP's document number."""
        if not order.lines:
            raise ErpRefused("an order without lines cannot be posted")
        self.held[order.po_id] = order
        return self.numbers.setdefault(order.po_id, f"45{len(self.numbers) + 1:08d}")


async def run_adapter(
    nats_url: str,
    po_address: str,
    namespace: str = "sg",
    *,
    erp: ErpClient | None = None,
    metadata: tuple[tuple[str, str], ...] = (("x-syncgov-system", "erp"),),
    stop: asyncio.Event | None = None,
) -> ErpClient:
    erp = erp or ErpClient()
    stop = stop or asyncio.Event()
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    stream, durable = f"{namespace.upper()}_PO", f"{namespace}-erp-adapter-po"
    await js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name=durable,
            filter_subject=f"{namespace}.po.>",
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=1,
            ack_wait=60,
        ),
    )
    subscription = await js.pull_subscribe_bind(durable, stream)
    async with grpc.aio.insecure_channel(po_address) as channel:
        stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
        while not stop.is_set():
            try:
                messages = await subscription.fetch(1, timeout=0.5)
            except TimeoutError:
                continue
            for message in messages:
                envelope = envelope_pb2.EventEnvelope.FromString(message.data)
                kind = DOCUMENT_EVENTS.get(envelope.event_type)
                if kind is None:  # acknowledgments, rejections, held versions: not for the ERP
                    await message.ack()
                    continue
                event = kind()
                envelope.payload.Unpack(event)
                order = event.purchase_order
                call_metadata = answering(message.headers, metadata)
                try:
                    if erp.version_held(order.po_id) >= order.version:
                        number = erp.numbers[order.po_id]  # a redelivery: already applied
                    else:
                        number = await erp.apply(order)
                    await stub.AcknowledgePurchaseOrder(
                        po_service_pb2.AcknowledgePurchaseOrderRequest(
                            po_id=order.po_id, version=order.version, erp_document_number=number
                        ),
                        metadata=call_metadata,
                    )
                except ErpRefused as refusal:
                    await stub.RejectPurchaseOrder(
                        po_service_pb2.RejectPurchaseOrderRequest(
                            po_id=order.po_id, version=order.version, reason=str(refusal)
                        ),
                        metadata=call_metadata,
                    )
                except Exception:
                    log.exception("could not apply %s v%s; retrying", order.po_id, order.version)
                    await message.nak(delay=5)
                    continue
                await message.ack()
                log.info("ERP holds %s v%s", order.po_id, order.version)
    with contextlib.suppress(Exception):
        await subscription.unsubscribe()
    await nc.close()
    return erp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--po-addr", default="127.0.0.1:50052")
    parser.add_argument("--namespace", default="sg")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    asyncio.run(run_adapter(args.nats_url, args.po_addr, args.namespace))


if __name__ == "__main__":
    main()
