"""invoice-status's clearings where a review found them wrong, against a real nats-server, valkey and
exception-router. The clearings, the raises (over an ExceptionReporter named invoice-status) and the raise-stored
check are the real ones; only the follower's deliveries are driven by hand, one event behind the appends."""

from __future__ import annotations

import asyncio

import pytest

from libs.policy.engine import Policy
from libs.runtime.decider import Recorded
from libs.runtime.events import EventReader
from libs.runtime.settings import DEFAULT_POLICY_FILE
from libs.runtime.streams import EXCEPTION
from libs.runtime.subjects import Namespace
from libs.runtime.testing import running_service, unique_namespace
from services.exception_router.wiring import wire as wire_router
from services.invoice_status.decider import INITIAL, Blocked, FactVersions, Matched, evolve
from services.invoice_status.domain import Reason
from services.invoice_status.findings import BlockingExceptions, ClearedReasons, reasons_standing
from syncgov.exception.v1 import exception_pb2, exception_service_pb2_grpc
from syncgov.exception.v1 import exception_service_pb2 as exs
from tests.integration.helpers import eventually, requests_of
from tests.integration.test_exception_router import reporter_for, router_settings
from tests.unit.invoice_status.test_decider import AWAITING, ID, MATCHED, submitted

pytestmark = pytest.mark.timeout(60)

OPS = (("x-syncgov-system", "ops-console"),)


def _recorded(event, sequence: int):
    return Recorded(event, sequence, f"e-{sequence}", sequence, "k", "procurement")


async def test_an_exception_whose_reason_blocks_the_invoice_again_is_not_cleared(nats_server, valkey_server, js):
    """A clearing of an ended block, stored after the reason blocked again, names the raise it ends: exception-router
    takes it as overtaken, and the exception of the standing block stays open."""
    namespace = unique_namespace()
    async with (
        running_service(router_settings(nats_server, valkey_server, namespace), wire_router) as (_, channel, _),
        reporter_for(nats_server, namespace, "invoice-status") as reporter,
    ):
        router = exception_service_pb2_grpc.ExceptionRouterServiceStub(channel)
        policy = Policy.from_text(DEFAULT_POLICY_FILE.read_text(), 1)
        blocking = BlockingExceptions(reporter, lambda: policy)
        reader = EventReader(requests_of(js), Namespace(namespace))

        async def raise_stored(raise_id: str) -> bool:  # wiring.raise_stored
            return await reader.last(EXCEPTION.domain, raise_id) is not None

        async def newest() -> int:
            return 0

        cleared = ClearedReasons(blocking, newest, raise_stored)

        async def awaiting_receipt():
            listed = await router.ListExceptions(
                exs.ListExceptionsRequest(type=exception_pb2.EXCEPTION_TYPE_AWAITING_RECEIPT), metadata=OPS
            )
            return [e for e in listed.exceptions if e.object.object_key == ID] or None

        # 1: submitted before its goods, blocked awaiting_receipt; the request raises, the follower delivers it.
        first = evolve(INITIAL, _recorded(submitted(AWAITING), 1))
        await blocking.raise_for(ID, first, first.exceptions_sequence)
        cleared.followed(ID, first, 1)
        [opened] = await eventually(awaiting_receipt)
        assert opened.state == exception_pb2.EXCEPTION_STATE_OPEN

        # 2: the receipt landed, the re-match matched it; the follower delivers it (a clearing is due).
        second = evolve(first, _recorded(Matched(MATCHED, FactVersions()), 2))
        cleared.followed(ID, second, 2)

        # 3: the goods went back, a re-match blocks it awaiting_receipt again and raises that (id of 3) right after
        # its append. The periodic flush runs before this replica's follower delivered 3.
        third = evolve(second, _recorded(Blocked(AWAITING, FactVersions()), 3))
        assert Reason.AWAITING_RECEIPT in reasons_standing(third)
        await blocking.raise_for(ID, third, third.exceptions_sequence)
        await cleared.flush()
        cleared.followed(ID, third, 3)  # the follower catches up: too late
        await cleared.flush()

        await asyncio.sleep(1.5)  # the router takes the raise and the clearing
        [now] = await awaiting_receipt()
        assert now.exception_id == opened.exception_id
        assert now.state == exception_pb2.EXCEPTION_STATE_OPEN, (
            f"the invoice is blocked awaiting_receipt (since 3, raised) but its exception is "
            f"{exception_pb2.ExceptionState.Name(now.state)}, "
            f"{exception_pb2.ResolutionKind.Name(now.resolution.kind)} by {now.resolution.by!r}"
        )
