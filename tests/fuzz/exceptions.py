"""Seeds for fuzzing exception-router: exceptions that exist in every state, so mutated requests reach deep.

Before the router starts, a ``delivery_exhausted`` raise carrying an original message is published as a service's
consumer would hand it off (RaiseException refuses original messages from outside), so replays have something to
replay. The seeds raise more through RaiseException, acknowledge one, resolve one, and then name those ids in every
RPC; structured strategies draw raises with odd types, objects, evidence and keys, and lifecycle commands on the
seeded ids with odd people, notes and kinds.
"""

from __future__ import annotations

import json
from typing import Any

import nats
from hypothesis import strategies as st
from opentelemetry import trace

from libs.runtime.requests import Requests
from libs.runtime.settings import RuntimeSettings
from tests.fuzz.strategies import HOSTILE_STRINGS, mostly_plausible

SERVICE = "/syncgov.exception.v1.ExceptionRouterService/"
HANDED_OFF_RAISE = "fz-handed-off-1"
PEOPLE = ["j.doe", "m.roe", "ops.bot"]


async def before_start(settings: RuntimeSettings) -> None:
    from libs.runtime.events import EventPublisher
    from libs.runtime.exception_reporter import ExceptionReporter
    from libs.runtime.streams import EXCEPTION, provision_streams
    from libs.runtime.subjects import Namespace
    from syncgov.common.v1 import types_pb2
    from syncgov.exception.v1 import exception_pb2 as ex

    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        namespace = Namespace(settings.namespace)
        await provision_streams(js, namespace, [EXCEPTION])
        reporter = ExceptionReporter(
            EventPublisher(Requests(nc), namespace, trace.get_tracer("fuzz"), 5.0), "po-publication"
        )
        stream = namespace.stream("po")
        await reporter.raise_exception(
            ex.EXCEPTION_TYPE_DELIVERY_EXHAUSTED,
            ex.SEVERITY_HIGH,
            types_pb2.ObjectRef(object_type="message", object_key=f"{stream}:7"),
            "erp-sink gave up after 5 deliveries",
            original_message=ex.OriginalMessage(
                subject=f"{settings.namespace}.po.PO-FZ-1.published",
                headers={"Nats-Msg-Id": "po:PO-FZ-1:1"},
                data=b"\x0a\x03abc",
                stream=stream,
                stream_sequence=7,
                consumer=f"{settings.namespace}-erp-sink-orders",
                deliveries=5,
                last_error="no mapping",
            ),
            discriminator=f"{settings.namespace}-erp-sink-orders",
            exception_id=HANDED_OFF_RAISE,
        )
    finally:
        await nc.drain()


def _raise(type_value: Any, key: str, detail: str, **extra: Any) -> Any:
    from syncgov.common.v1 import types_pb2
    from syncgov.exception.v1 import exception_pb2 as ex
    from syncgov.exception.v1 import exception_service_pb2 as pb

    idempotency_key = extra.pop("idempotency_key", "")
    return pb.RaiseExceptionRequest(
        exception=ex.Exception(
            type=type_value,
            object=types_pb2.ObjectRef(object_type="purchase_order", object_key=key),
            detail=detail,
            **extra,
        ),
        idempotency_key=idempotency_key,
    )


async def seed(call: Any) -> Any:
    from syncgov.common.v1 import types_pb2
    from syncgov.exception.v1 import exception_pb2 as ex
    from syncgov.exception.v1 import exception_service_pb2 as pb
    from tests.fuzz.targets import Seeds

    raises = [
        _raise(ex.EXCEPTION_TYPE_OVER_RECEIPT, "PO-FZ-1", "12 of 10", site_id="DC-EAST", idempotency_key="fz-1"),
        _raise(ex.EXCEPTION_TYPE_PRICE_VARIANCE, "PO-FZ-2", "4% over", evidence=['{"price": "13.00"}']),
        _raise(ex.EXCEPTION_TYPE_DRIFT_DETECTED, "PO-FZ-3", "ERP holds version 2", business_unit="BU-NORTH"),
    ]
    ids = []
    for request in raises:
        answer = await call(SERVICE + "RaiseException", request, "erp")
        ids.append(answer.exception.exception_id)
    handed_off = await call(
        SERVICE + "GetException", pb.GetExceptionRequest(exception_id=HANDED_OFF_RAISE), "ops-console"
    )
    ids.append(handed_off.exception.exception_id)
    await call(
        SERVICE + "AcknowledgeException",
        pb.AcknowledgeExceptionRequest(exception_id=ids[1], acknowledged_by="j.doe"),
        "ops-console",
    )
    await call(
        SERVICE + "ResolveException",
        pb.ResolveExceptionRequest(
            exception_id=ids[2], resolution="ERP re-synced", kind=ex.RESOLUTION_KIND_FIXED, resolved_by="j.doe"
        ),
        "ops-console",
    )
    seeds = Seeds(
        plausible={
            "exception_id": [*ids, HANDED_OFF_RAISE],
            "acknowledged_by": PEOPLE,
            "resolved_by": PEOPLE,
            "replayed_by": PEOPLE,
            "owner_team": ["integration-team", "procurement-ops", "accounts-payable", "warehouse-east"],
            "object_key": ["PO-FZ-1", "PO-FZ-2", "INV-1"],
            "object_type": ["purchase_order", "invoice", "message"],
            "idempotency_key": ["fz-1", "fz-2"],
        },
        systems={name: ["ops-console"] for name in ("AcknowledgeException", "ResolveException", "ReplayException")},
    )
    seeds.add(
        *raises,
        pb.GetExceptionRequest(exception_id=ids[0]),
        pb.ListExceptionsRequest(owner_team="warehouse-east", page=types_pb2.PageRequest(page_size=2)),
        pb.ListExceptionsRequest(type=ex.EXCEPTION_TYPE_DELIVERY_EXHAUSTED, unresolved_only=True),
        pb.SummarizeExceptionsRequest(owner_team="procurement-ops"),
        pb.AcknowledgeExceptionRequest(exception_id=ids[0], acknowledged_by="m.roe"),
        pb.ResolveExceptionRequest(
            exception_id=ids[0], resolution="accepted", kind=ex.RESOLUTION_KIND_ACCEPTED, resolved_by="m.roe"
        ),
        pb.ReplayExceptionRequest(exception_id=ids[3], reason="mapping fixed", replayed_by="j.doe"),
    )
    seeds.strategies[pb.RaiseExceptionRequest.DESCRIPTOR.full_name] = [raise_requests()]
    seeds.strategies[pb.ResolveExceptionRequest.DESCRIPTOR.full_name] = [resolutions(ids)]
    return seeds


def raise_requests() -> st.SearchStrategy[Any]:
    from syncgov.exception.v1 import exception_pb2 as ex

    types = st.sampled_from([value.number for value in ex.ExceptionType.DESCRIPTOR.values] + [99, -1])
    evidence = st.lists(
        st.one_of(
            st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3).map(json.dumps),
            st.text(max_size=40),
        ),
        max_size=3,
    )
    return st.builds(
        lambda kind, key, detail, docs, site, token: _raise(
            kind, key, detail, evidence=docs, site_id=site, idempotency_key=token
        ),
        types,
        mostly_plausible(["PO-FZ-1", "PO-FZ-9"], HOSTILE_STRINGS),
        mostly_plausible(["over", "12 of 10"], HOSTILE_STRINGS),
        evidence,
        mostly_plausible(["DC-EAST", ""], HOSTILE_STRINGS),
        mostly_plausible(["", "fz-1", "fz-3"], HOSTILE_STRINGS),
    )


def resolutions(ids: list[str]) -> st.SearchStrategy[Any]:
    from syncgov.exception.v1 import exception_pb2 as ex
    from syncgov.exception.v1 import exception_service_pb2 as pb

    kinds = st.sampled_from([value.number for value in ex.ResolutionKind.DESCRIPTOR.values] + [42])
    return st.builds(
        lambda exception_id, note, kind, person: pb.ResolveExceptionRequest(
            exception_id=exception_id, resolution=note, kind=kind, resolved_by=person
        ),
        mostly_plausible(ids, HOSTILE_STRINGS),
        mostly_plausible(["fixed at source", ""], HOSTILE_STRINGS),
        kinds,
        mostly_plausible(PEOPLE, HOSTILE_STRINGS),
    )
