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
* **Repairs itself.** ``ErpClient.snapshot()`` is what the ERP holds (PO, version, content hash), for
  ``syncgov drift report --system erp``. When a report asks for repair, the control plane publishes the
  authoritative version of each stale, missing or differing PO on ``<ns>.repair.erp.purchase_order.<po>``; a
  second durable consumer applies it when it is newer than what the ERP holds (or the same version with other
  content) and acknowledges it exactly as the normal path does.
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
from nats.js.errors import NotFoundError

from libs.runtime.content_hash import content_sha256
from syncgov.common.v1 import envelope_pb2, types_pb2
from syncgov.controlplane.v1 import controlplane_pb2
from syncgov.controlplane.v1 import events_pb2 as controlplane_events_pb2
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

    def snapshot(self) -> list[controlplane_pb2.SystemObjectState]:
        """What the ERP holds, as ``ReportSystemState`` takes it: each PO's version and content hash, by PO."""
        return [
            controlplane_pb2.SystemObjectState(
                object=types_pb2.ObjectRef(object_type="purchase_order", object_key=po_id, version=order.version),
                content_sha256=content_sha256(order),
            )
            for po_id, order in sorted(self.held.items())
        ]

    def needs(self, order: po_pb2.PurchaseOrder) -> bool:
        """Whether a repaired version changes what the ERP holds: newer, or the same version with other content."""
        held = self.held.get(order.po_id)
        if held is None or held.version < order.version:
            return True
        return held.version == order.version and content_sha256(held) != content_sha256(order)


def one_at_a_time(durable: str, subjects: str) -> ConsumerConfig:
    """A durable pull consumer handing out one message at a time: the next only once this one is acknowledged."""
    return ConsumerConfig(
        durable_name=durable,
        filter_subject=subjects,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        max_ack_pending=1,
        ack_wait=60,
    )


async def acknowledge(
    stub: po_service_pb2_grpc.PurchaseOrderServiceStub,
    order: po_pb2.PurchaseOrder,
    number: str,
    metadata: tuple[tuple[str, str], ...],
) -> None:
    await stub.AcknowledgePurchaseOrder(
        po_service_pb2.AcknowledgePurchaseOrderRequest(
            po_id=order.po_id, version=order.version, erp_document_number=number
        ),
        metadata=metadata,
    )


async def repair(
    js,
    stub: po_service_pb2_grpc.PurchaseOrderServiceStub,
    erp: ErpClient,
    namespace: str,
    system: str,
    metadata: tuple[tuple[str, str], ...],
    stop: asyncio.Event,
) -> None:
    """Apply the authoritative versions the control plane re-publishes after a drift report asked for repair."""
    stream, durable = f"{namespace.upper()}_REPAIR", f"{namespace}-erp-adapter-repair"
    while not stop.is_set():
        try:
            await js.add_consumer(stream, one_at_a_time(durable, f"{namespace}.repair.{system}.purchase_order.>"))
            break
        except NotFoundError:  # the control plane creates the repair stream when it starts
            await asyncio.sleep(1)
    else:
        return
    subscription = await js.pull_subscribe_bind(durable, stream)
    while not stop.is_set():
        try:
            messages = await subscription.fetch(1, timeout=0.5)
        except TimeoutError:
            continue
        for message in messages:
            requested = controlplane_events_pb2.RepairRequested()
            envelope_pb2.EventEnvelope.FromString(message.data).payload.Unpack(requested)
            order = requested.purchase_order
            call_metadata = answering(message.headers, metadata)
            try:
                if erp.needs(order):
                    try:
                        number = await erp.apply(order)
                    except ErpRefused as refusal:
                        # As on the normal path: syncgov hears the ERP's no, and a person sees it (erp_rejected).
                        await stub.RejectPurchaseOrder(
                            po_service_pb2.RejectPurchaseOrderRequest(
                                po_id=order.po_id, version=order.version, reason=f"repair refused: {refusal}"
                            ),
                            metadata=call_metadata,
                        )
                    else:
                        await acknowledge(stub, order, number, call_metadata)
                        log.info("repaired: ERP holds %s v%s", order.po_id, order.version)
            except grpc.aio.AioRpcError as error:
                if error.code() not in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION):
                    log.exception("could not answer the repair of %s v%s; retrying", order.po_id, order.version)
                    await message.nak(delay=5)
                    continue
                log.warning("repair of %s v%s: %s; nothing more to do", order.po_id, order.version, error.details())
            except Exception:  # the ERP or the network failing for now: the repair comes back, the consumer lives on
                log.exception("could not apply the repair of %s v%s; retrying", order.po_id, order.version)
                await message.nak(delay=5)
                continue
            await message.ack()
    with contextlib.suppress(Exception):
        await subscription.unsubscribe()


async def run_adapter(
    nats_url: str,
    po_address: str,
    namespace: str = "sg",
    *,
    erp: ErpClient | None = None,
    metadata: tuple[tuple[str, str], ...] = (("x-syncgov-system", "erp"),),
    system: str = "erp",
    stop: asyncio.Event | None = None,
) -> ErpClient:
    erp = erp or ErpClient()
    stop = stop or asyncio.Event()
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    stream, durable = f"{namespace.upper()}_PO", f"{namespace}-erp-adapter-po"
    await js.add_consumer(stream, one_at_a_time(durable, f"{namespace}.po.>"))
    subscription = await js.pull_subscribe_bind(durable, stream)
    async with grpc.aio.insecure_channel(po_address) as channel:
        stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
        repairs = asyncio.create_task(repair(js, stub, erp, namespace, system, metadata, stop))
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
                    await acknowledge(stub, order, number, call_metadata)
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
        await repairs
    with contextlib.suppress(Exception):
        await subscription.unsubscribe()
    await nc.close()
    return erp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--po-addr", default="127.0.0.1:50052")
    parser.add_argument("--namespace", default="sg")
    parser.add_argument("--system", default="erp", help="The ERP's system id in policy (its repairs are consumed).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    metadata = (("x-syncgov-system", args.system),)
    asyncio.run(run_adapter(args.nats_url, args.po_addr, args.namespace, metadata=metadata, system=args.system))


if __name__ == "__main__":
    main()
