"""The broker is behind the edge too (DESIGN rule 11, docs/security.md).

NATS and Valkey refuse clients without credentials; each component's identity publishes only its own
domain's subjects, the shared inboxes and the JetStream API it needs, and reaches only its own keys.
An ``acknowledged`` event forged by anyone but po-publication never reaches the PO stream, so
GetPurchaseOrder cannot report a forged ERP number.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import nats
import nats.errors
import pytest
import redis.exceptions
from nats.aio.client import Client as NATS
from opentelemetry import trace
from redis.asyncio import Redis

from libs.runtime.buckets import Mark, SequenceMark
from libs.runtime.events import EventPublisher
from libs.runtime.requests import Requests
from libs.runtime.subjects import Namespace
from services.po_publication import domain as po_domain
from services.po_publication import events as po_events
from syncgov.po.v1 import po_service_pb2
from tests.integration.helpers import PROCUREMENT, sample_order

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

ERP = (("x-syncgov-system", "erp"),)


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[tuple[NATS, list[Exception]]]:
    """A client whose asynchronous errors (permission violations) the test can read."""
    errors: list[Exception] = []

    async def on_error(error: Exception) -> None:
        errors.append(error)

    nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False, max_reconnect_attempts=0)
    try:
        yield nc, errors
    finally:
        await nc.close()


async def refused(nc: NATS, errors: list[Exception], subject: str) -> bool:
    """Publish once and report whether the server answered with a permissions violation for it."""
    before = len(errors)
    await nc.publish(subject, b"forged")
    await nc.flush(timeout=2)
    for _ in range(5):  # the server answers -ERR before the PONG of the flush; the callback runs soon after
        # nats-py lowercases the server's message
        if any(f'violation for publish to "{subject.lower()}"' in str(error).lower() for error in errors[before:]):
            return True
        await asyncio.sleep(0.01)
    return False


async def test_nats_refuses_a_client_without_or_with_wrong_credentials(nats_server):
    for url in (nats_server.address_url, nats_server.address_url.replace("nats://", "nats://po-publication:wrong@")):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(
                url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2, error_cb=_ignore
            )


async def _ignore(_error: Exception) -> None:
    return None


async def test_an_unauthenticated_publish_never_lands_and_get_reports_no_forged_erp_number(
    po_service, po_settings, js, nats_server
):
    """The hostile test of issue 9: no credentials, then another component's credentials, then the operator's."""
    _, stub, _ = po_service
    namespace = Namespace(po_settings.namespace)
    await stub.PublishPurchaseOrder(
        po_service_pb2.PublishPurchaseOrderRequest(purchase_order=sample_order("PO-SEC-1")), metadata=PROCUREMENT
    )
    forged = po_events.encode(
        "PO-SEC-1",
        po_domain.VersionAcknowledged(
            1, "ERP-FORGED-666", datetime.now(UTC), timedelta(seconds=1), "forged-ack-1", "erp"
        ),
    )
    subject = namespace.object_subject("po", "PO-SEC-1", po_events.ACKNOWLEDGED)

    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(nats_server.address_url, allow_reconnect=False, max_reconnect_attempts=0, error_cb=_ignore)
    for intruder in ("supplier-normalization", "control-plane"):
        async with connected(nats_server.url_for(intruder)) as (nc, errors):
            publisher = EventPublisher(Requests(nc), namespace, trace.get_tracer(__name__), timeout=1.0)
            with pytest.raises(Exception, match=r"(?i)timeout|no response"):  # nats-py raises its own
                await publisher.publish(forged)
            assert any(subject.lower() in str(error).lower() for error in errors), errors

    stream = namespace.stream("po")
    assert (await js.stream_info(stream)).state.messages == 1  # only the published version
    got = await stub.GetPurchaseOrder(po_service_pb2.GetPurchaseOrderRequest(po_id="PO-SEC-1"), metadata=PROCUREMENT)
    assert got.erp_acknowledgment.erp_document_number == ""

    # The same bytes through po-publication's own identity would land: the refusal above is the broker's.
    async with connected(nats_server.url_for("po-publication")) as (nc, _):
        publisher = EventPublisher(Requests(nc), namespace, trace.get_tracer(__name__), timeout=2.0)
        await publisher.publish(forged)
    assert (await js.stream_info(stream)).state.messages == 2


async def test_each_component_publishes_only_its_domain_and_the_inboxes(nats_server):
    ns = "tsec"
    async with connected(nats_server.url_for("po-publication")) as (nc, errors):
        for subject in (f"{ns}.supplier.S1.created", f"{ns}.audit.x.sealed", f"$KV.{ns}_policy.rev.9", "_INBOX.x"):
            assert await refused(nc, errors, subject), subject
        for subject in (f"{ns}.po.P1.published", f"{ns}.exception.e1.raised", f"{ns}.auditin.a1.refused"):
            assert not await refused(nc, errors, subject), subject
    async with connected(nats_server.url_for("supplier-normalization")) as (nc, errors):
        assert await refused(nc, errors, f"{ns}.po.P1.acknowledged")
        assert not await refused(nc, errors, f"{ns}.supplier.S1.created")
    async with connected(nats_server.url_for("control-plane")) as (nc, errors):
        assert await refused(nc, errors, f"{ns}.po.P1.acknowledged")
        assert not await refused(nc, errors, f"{ns}.audit.x.sealed")
        assert not await refused(nc, errors, f"$KV.{ns}_policy.rev.9")


async def test_invoice_status_alone_keeps_its_marks_bucket(nats_server):
    """invoice-status creates its bucket and moves its settled-through mark as its own user; no other component
    may write that mark (a forged mark past unsettled submissions would skip them at the next start)."""
    ns = f"tsec{uuid.uuid4().hex[:6]}"
    async with connected(nats_server.url_for("invoice-status")) as (nc, _errors):
        mark = SequenceMark(nc.jetstream(), f"{ns}_invoice_marks", "settled-through", "the test's marks")
        assert await mark.advance(12, "2026-11-27T10:00:00Z") == 12
        assert (await mark.read()) == Mark(12, "2026-11-27T10:00:00Z")
    async with connected(nats_server.url_for("po-publication")) as (nc, errors):
        assert await refused(nc, errors, f"$KV.{ns}_invoice_marks.settled-through")


async def test_components_cannot_delete_or_purge_streams_or_read_subjects_directly(
    po_service, po_settings, nats_server
):
    namespace = Namespace(po_settings.namespace)
    async with connected(nats_server.url_for("po-publication")) as (nc, errors):
        for subject in (
            f"$JS.API.STREAM.DELETE.{namespace.stream('supplier')}",
            f"$JS.API.STREAM.PURGE.{namespace.stream('po')}",
            f"$JS.API.STREAM.MSG.DELETE.{namespace.stream('po')}",
            f"$JS.API.CONSUMER.DELETE.{namespace.stream('po')}.any",
        ):
            assert await refused(nc, errors, subject), subject
        before = len(errors)
        await nc.subscribe(f"{namespace.root}.po.>")  # reading goes through JetStream, never raw subjects
        await nc.flush(timeout=2)
        await asyncio.sleep(0.05)
        assert any("subscription" in str(error).lower() for error in errors[before:]), errors


async def test_valkey_refuses_anonymous_clients_and_keeps_components_to_their_keys(valkey_server):
    anonymous = Redis.from_url(valkey_server.address_url)
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            await anonymous.ping()
    finally:
        await anonymous.aclose()
    admin = Redis.from_url(valkey_server.url)
    po = Redis.from_url(valkey_server.url_for("po-publication"))
    try:
        await admin.set("tsec:supplier-normalization:golden", b"secret")
        await po.set("tsec:po-publication:idem:k", b"mine")
        assert await po.get("tsec:po-publication:idem:k") == b"mine"
        with pytest.raises(redis.exceptions.NoPermissionError):
            await po.get("tsec:supplier-normalization:golden")
        with pytest.raises(redis.exceptions.NoPermissionError):
            await po.set("tsec:supplier-normalization:golden", b"forged")
        with pytest.raises(redis.exceptions.NoPermissionError):
            await po.flushall()
        assert await admin.get("tsec:supplier-normalization:golden") == b"secret"
    finally:
        await po.aclose()
        await admin.aclose()
