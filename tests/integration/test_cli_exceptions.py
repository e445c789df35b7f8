"""`syncgov exceptions list|show|ack|resolve|replay|summary` against exception-router running for real.

The router runs as tests/integration/test_exception_router.py runs it; raises are published as the services
publish them (ExceptionReporter). The default policy: price_variance goes to accounts-payable (escalates after 1d),
over_receipt without a site to procurement-ops, ownership_violation and delivery_exhausted to integration-team;
only ops-console (the CLI's default system) has the exception_handling right.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

import pytest

from libs.runtime.testing import running_service, unique_namespace
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import exception_pb2 as ex
from syncgov.exception.v1 import exception_service_pb2 as svc
from syncgov.exception.v1 import exception_service_pb2_grpc
from tests.integration.helpers import cli, eventually, table_row
from tests.integration.test_exception_router import (
    OPS,
    PoisonedSink,
    erp_sink_settings,
    fast_retries,
    listed,
    over_receipt_ref,
    policy_with,
    publish_order_event,
    reporter_for,
    routed,
    router,
    router_settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
AGE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \((<1m|\d+m)\)"


@dataclass
class Router:
    address: str
    stub: exception_service_pb2_grpc.ExceptionRouterServiceStub
    ids: dict[str, str]  # type name -> exception id
    namespace: str

    async def get(self, exception_id: str) -> ex.Exception:
        answer = await self.stub.GetException(svc.GetExceptionRequest(exception_id=exception_id), metadata=OPS)
        return answer.exception


@pytest.fixture
async def exceptions(nats_server, valkey_server, clean_env):
    """Three exceptions, oldest first: a price variance on invoice INV-9 (with evidence), an over-receipt on PO-1
    raised three times, and an ownership violation on PO-2 (critical)."""
    namespace = unique_namespace()
    async with router(router_settings(nats_server, valkey_server, namespace)) as (running, stub):
        async with reporter_for(nats_server, namespace, "invoice-status") as reporter:
            await reporter.raise_exception(
                ex.EXCEPTION_TYPE_PRICE_VARIANCE,
                ex.SEVERITY_MEDIUM,
                types_pb2.ObjectRef(object_type="invoice", object_key="INV-9"),
                "line 1: 13.50 invoiced, 12.50 ordered",
                evidence=['{"invoiced": "13.50", "ordered": "12.50"}'],
            )
            await eventually(lambda: routed(listed(stub), 1))
        async with reporter_for(nats_server, namespace, "receipt-reconciliation") as reporter:
            for n in range(3):
                await reporter.raise_exception(
                    ex.EXCEPTION_TYPE_OVER_RECEIPT, ex.SEVERITY_MEDIUM, over_receipt_ref("PO-1"), f"over {n}"
                )
            await eventually(lambda: routed(listed(stub), 2))
        async with reporter_for(nats_server, namespace, "po-publication") as reporter:
            await reporter.raise_exception(
                ex.EXCEPTION_TYPE_OWNERSHIP_VIOLATION,
                ex.SEVERITY_CRITICAL,
                types_pb2.ObjectRef(object_type="purchase_order", object_key="PO-2"),
                "erp may not write purchase_order",
            )

        async def all_in():
            rows = await routed(listed(stub), 3)
            return rows if rows and rows[1].occurrences == 3 else None

        rows = await eventually(all_in)
        ids = {
            ex.ExceptionType.Name(row.type).removeprefix("EXCEPTION_TYPE_").lower(): row.exception_id for row in rows
        }
        yield Router(running.address, stub, ids, namespace)


async def test_list_prints_one_readable_row_per_exception_and_json_for_scripts(exceptions):
    result = await cli("exceptions", "list", "--address", exceptions.address)
    assert result.exit_code == 0, result.stdout
    out = result.stdout
    assert "3 exception(s)" in out
    # exception, type, severity, state, owner team, object, occurrences, first raised (age), escalated
    price = table_row(out, exceptions.ids["price_variance"])
    assert price[1:7] == ["price_variance", "medium", "open", "accounts-payable", "invoice:INV-9", "1"]
    assert re.fullmatch(AGE, price[7]), price[7]
    assert price[8] == "-"
    over = table_row(out, exceptions.ids["over_receipt"])
    assert over[1:7] == ["over_receipt", "medium", "open", "procurement-ops", "purchase_order:PO-1", "3"]
    owned = table_row(out, exceptions.ids["ownership_violation"])
    assert owned[1:5] == ["ownership_violation", "critical", "open", "integration-team"]
    # Oldest first, as the router lists them.
    positions = [out.index(exceptions.ids[name]) for name in ("price_variance", "over_receipt", "ownership_violation")]
    assert positions == sorted(positions)

    as_json = await cli("exceptions", "list", "--json", "--address", exceptions.address)
    assert as_json.exit_code == 0, as_json.stdout
    parsed = json.loads(as_json.stdout)  # nothing but one JSON array on stdout
    assert isinstance(parsed, list)
    assert [item["exception_id"] for item in parsed] == [
        exceptions.ids[name] for name in ("price_variance", "over_receipt", "ownership_violation")
    ]
    assert parsed[0]["type"] == "EXCEPTION_TYPE_PRICE_VARIANCE"
    assert parsed[0]["owner_team"] == "accounts-payable"
    assert parsed[0]["object"] == {"object_type": "invoice", "object_key": "INV-9"}
    assert parsed[1]["occurrences"] == 3
    assert parsed[2]["severity"] == "SEVERITY_CRITICAL"


async def test_list_filters_by_team_type_severity_object_age_state_and_limit(exceptions):
    address = ("--address", exceptions.address)

    async def ids(*filters: str) -> list[str]:
        result = await cli("exceptions", "list", "--json", *filters, *address)
        assert result.exit_code == 0, result.stdout
        return [item["exception_id"] for item in json.loads(result.stdout)]

    price, over, owned = (exceptions.ids[n] for n in ("price_variance", "over_receipt", "ownership_violation"))
    assert await ids("--team", "accounts-payable") == [price]
    assert await ids("--type", "over_receipt") == [over]
    assert await ids("--severity", "critical") == [owned]
    assert await ids("--object", "invoice:INV-9") == [price]
    assert await ids("--object", "purchase_order:PO-1") == [over]
    assert await ids("--object", "invoice:INV-0") == []
    assert await ids("--older-than", "7d") == []  # raised moments ago
    assert await ids("--older-than", "0s") == [price, over, owned]
    assert await ids("--escalated") == []
    assert await ids("--state", "acknowledged") == []

    titled = await cli("exceptions", "list", "--team", "accounts-payable", "--older-than", "7d", *address)
    assert titled.exit_code == 0, titled.stdout
    assert "0 exception(s) (team accounts-payable, first raised 7d ago or earlier)" in titled.stdout
    first = await cli("exceptions", "list", "--limit", "1", *address)
    assert first.exit_code == 0, first.stdout
    assert "1 exception(s), more exist" in first.stdout
    assert price in first.stdout
    assert over not in first.stdout

    # --open: the backlog; once one is resolved it is gone from it, and --state resolved finds it.
    resolved = await cli(
        "exceptions", "resolve", over, "--kind", "accepted", "--note", "kept the extra", "--person", "j.doe", *address
    )
    assert resolved.exit_code == 0, resolved.stdout
    assert await ids("--open") == [price, owned]
    assert await ids("--state", "resolved") == [over]

    for bad in (
        ("--type", "no_such_type"),
        ("--state", "closed"),
        ("--severity", "urgent"),
        ("--object", "PO-1"),
        ("--older-than", "a week"),
        ("--limit", "0"),
        ("--open", "--state", "resolved"),
    ):
        result = await cli("exceptions", "list", *bad, *address)
        assert result.exit_code == 2, (bad, result.stdout)


async def test_show_prints_routing_detail_and_evidence_and_finds_an_exception_by_a_raise_id(exceptions):
    price = exceptions.ids["price_variance"]
    result = await cli("exceptions", "show", price, "--address", exceptions.address)
    assert result.exit_code == 0, result.stdout
    out = result.stdout
    assert f"exception {price}" in out
    assert table_row(out, "type")[1] == "price_variance"
    assert table_row(out, "state")[1] == "open"
    assert table_row(out, "owner team")[1] == "accounts-payable"
    assert table_row(out, "routed by")[1] == "exceptions.routes[4] of policy revision 0"
    assert table_row(out, "object")[1] == "invoice:INV-9"
    assert table_row(out, "raised by")[1] == "invoice-status"
    assert table_row(out, "detail")[1] == "line 1: 13.50 invoiced, 12.50 ordered"
    assert table_row(out, "evidence 1")[1] == '{"invoiced": "13.50", "ordered": "12.50"}'
    assert table_row(out, "acknowledged")[1] == "-"
    assert table_row(out, "resolved")[1] == "-"
    assert re.fullmatch(
        r"due \S+Z \(in 23h 59m\), marked escalated, staying with its owner", table_row(out, "escalation")[1]
    )
    assert "original message" not in out  # a business exception carries none

    raise_id = (await exceptions.get(price)).last_raised_id
    assert raise_id
    assert raise_id != price
    by_raise = await cli("exceptions", "show", raise_id, "--address", exceptions.address)
    assert by_raise.exit_code == 0, by_raise.stdout
    assert f"exception {price}" in by_raise.stdout  # what a service answered its caller finds the exception

    over = await cli("exceptions", "show", exceptions.ids["over_receipt"], "--json", "--address", exceptions.address)
    assert over.exit_code == 0, over.stdout
    document = json.loads(over.stdout)
    assert document["exception_id"] == exceptions.ids["over_receipt"]
    assert (document["occurrences"], document["detail"]) == (3, "over 0")

    missing = await cli("exceptions", "show", "EXC-nobody", "--address", exceptions.address)
    assert missing.exit_code == 1, missing.stdout
    assert missing.stdout.strip().splitlines() == ["NOT_FOUND: no exception 'EXC-nobody'"]


async def test_show_never_lets_another_systems_text_drive_the_terminal(nats_server, exceptions):
    # The edge refuses such text in RaiseException; a service's own raise (or a consumer's last error) is not bounded.
    async with reporter_for(nats_server, exceptions.namespace, "erp-adapter") as reporter:
        raised = await reporter.raise_exception(
            ex.EXCEPTION_TYPE_VALIDATION_FAILED,
            ex.SEVERITY_HIGH,
            types_pb2.ObjectRef(object_type="purchase_order", object_key="PO-3"),
            "unit \x1b[2J[bold red]PF[/bold red]\u202e unknown",
        )
    result = await cli("exceptions", "show", raised.exception_id, "--address", exceptions.address)
    assert result.exit_code == 0, result.stdout
    assert "\x1b" not in result.stdout  # no escape sequence reaches the terminal
    assert "\u202e" not in result.stdout  # nor a bidi override
    assert table_row(result.stdout, "detail")[1] == r"unit \x1b[2J[bold red]PF[/bold red]\u202e unknown"


async def test_acknowledge_then_resolve_round_trip_names_the_person_and_the_system(exceptions):
    price = exceptions.ids["price_variance"]
    address = ("--address", exceptions.address)
    taken = await cli("exceptions", "ack", price, "--person", "j.doe", *address)
    assert taken.exit_code == 0, taken.stdout
    lines = taken.stdout.splitlines()
    assert lines[0] == f"{price}: acknowledged"
    assert re.fullmatch(r"acknowledged by j\.doe through ops-console at \S+Z", lines[1]), lines
    stored = await exceptions.get(price)
    assert stored.state == ex.EXCEPTION_STATE_ACKNOWLEDGED
    assert (stored.acknowledgment.by, stored.acknowledgment.through) == ("j.doe", "ops-console")

    other = await cli("exceptions", "ack", price, "--person", "m.roe", *address)
    assert other.exit_code == 1, other.stdout
    assert other.stdout.startswith("FAILED_PRECONDITION: the exception was acknowledged by j.doe already")

    closed = await cli(
        "exceptions", "resolve", price, "--kind", "accepted", "--note", "price rise agreed", "--person", "j.doe",
        *address,
    )  # fmt: skip
    assert closed.exit_code == 0, closed.stdout
    lines = closed.stdout.splitlines()
    assert lines[0] == f"{price}: resolved"
    assert re.fullmatch(r"resolved accepted by j\.doe through ops-console at \S+Z: price rise agreed", lines[1]), lines
    stored = await exceptions.get(price)
    assert stored.state == ex.EXCEPTION_STATE_RESOLVED
    assert (stored.resolution.kind, stored.resolution.note, stored.resolution.by) == (
        ex.RESOLUTION_KIND_ACCEPTED,
        "price rise agreed",
        "j.doe",
    )

    shown = await cli("exceptions", "show", price, *address)
    assert table_row(shown.stdout, "state")[1] == "resolved"
    assert re.fullmatch(r"by j\.doe through ops-console at \S+Z", table_row(shown.stdout, "acknowledged")[1])
    assert table_row(shown.stdout, "resolved")[1].endswith(": price rise agreed")
    # No deadline shown as running.
    assert table_row(shown.stdout, "escalation")[1] == "none: closed before its deadline"
    again = await cli("exceptions", "ack", price, "--person", "j.doe", *address)
    assert again.exit_code == 1, again.stdout
    assert again.stdout.startswith("FAILED_PRECONDITION: the exception is closed (accepted by j.doe)")


async def test_an_acknowledgment_through_a_system_without_the_right_is_refused_and_explained(exceptions):
    price = exceptions.ids["price_variance"]
    address = ("--address", exceptions.address)
    refused = await cli("exceptions", "ack", price, "--person", "j.doe", "--system", "erp", *address)
    assert refused.exit_code == 1, refused.stdout
    out = " ".join(refused.stdout.split())
    assert out.startswith("PERMISSION_DENIED: erp may not write exception_handling")
    assert "nothing was acknowledged: policy revision 0 gives erp no exception_handling right" in out
    raised = re.search(r"the refusal was raised as exception (\S+)", out)
    assert raised, out
    assert (await exceptions.get(price)).state == ex.EXCEPTION_STATE_OPEN  # nothing was recorded

    # The refusal itself is an exception the router holds: an ownership violation about the handling.
    async def refusal():
        rows = await listed(exceptions.stub, type=ex.EXCEPTION_TYPE_OWNERSHIP_VIOLATION)
        return [row for row in rows if row.object.object_type == "exception_handling"] or None

    violation = (await eventually(refusal))[0]
    assert violation.object.object_key == price
    shown = await cli("exceptions", "show", raised[1], *address)
    assert shown.exit_code == 0, shown.stdout
    assert f"exception {violation.exception_id}" in shown.stdout

    for command in (
        ("resolve", price, "--kind", "fixed", "--note", "done", "--person", "j.doe"),
        ("replay", price, "--reason", "fixed", "--person", "j.doe"),
    ):
        result = await cli("exceptions", *command, "--system", "wms-east", *address)
        assert result.exit_code == 1, result.stdout
        verb = "resolved" if command[0] == "resolve" else "replayed"
        assert f"nothing was {verb}: policy revision 0 gives wms-east no exception_handling right" in " ".join(
            result.stdout.split()
        )


async def test_usage_errors_are_exit_2_and_record_nothing(exceptions):
    price = exceptions.ids["price_variance"]
    address = ("--address", exceptions.address)
    for args in (
        ("resolve", price, "--kind", "solved", "--note", "x", "--person", "j.doe"),
        ("resolve", price, "--kind", "replayed", "--note", "x", "--person", "j.doe"),  # only a replay closes so
        ("resolve", price, "--kind", "fixed", "--note", " ", "--person", "j.doe"),
        ("resolve", price, "--kind", "fixed", "--note", "x"),
        ("ack", price, "--person", ""),
        ("ack", price),
        ("replay", "--reason", "x", "--person", "j.doe"),  # neither an id nor --all-matching
        ("replay", price, "--all-matching", "--reason", "x", "--person", "j.doe"),
        ("replay", price, "--team", "integration-team", "--reason", "x", "--person", "j.doe"),
        ("replay", "--all-matching", "--type", "price_variance", "--reason", "x", "--person", "j.doe"),
        ("replay", "--all-matching", "--state", "resolved", "--reason", "x", "--person", "j.doe"),
    ):
        result = await cli("exceptions", *args, *address)
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
    assert (await exceptions.get(price)).state == ex.EXCEPTION_STATE_OPEN


async def test_an_unreachable_exception_router_is_exit_3():
    for args in (
        ("list",),
        ("show", "EXC-1"),
        ("ack", "EXC-1", "--person", "j.doe"),
        ("resolve", "EXC-1", "--kind", "fixed", "--note", "x", "--person", "j.doe"),
        ("replay", "EXC-1", "--reason", "x", "--person", "j.doe"),
        ("replay", "--all-matching", "--yes", "--reason", "x", "--person", "j.doe"),
        ("summary",),
    ):
        result = await cli("exceptions", *args, "--address", "127.0.0.1:1")
        assert result.exit_code == 3, (args, result.stdout)
        assert "cannot reach exception-router at 127.0.0.1:1" in result.stdout


async def test_summary_counts_the_backlog_by_team_and_type_and_the_closure_times(exceptions):
    address = ("--address", exceptions.address)
    await cli("exceptions", "ack", exceptions.ids["ownership_violation"], "--person", "j.doe", *address)
    closed = await cli(
        "exceptions", "resolve", exceptions.ids["price_variance"], "--kind", "fixed", "--note", "credit note",
        "--person", "j.doe", *address,
    )  # fmt: skip
    assert closed.exit_code == 0, closed.stdout

    async def counted():
        answer = await exceptions.stub.SummarizeExceptions(svc.SummarizeExceptionsRequest(), metadata=OPS)
        return answer.closure.closed == 1 and any(row.acknowledged for row in answer.backlog)

    await eventually(counted)
    result = await cli("exceptions", "summary", *address)
    assert result.exit_code == 0, result.stdout
    out = result.stdout
    assert "backlog: 1 open, 1 acknowledged, 0 escalated" in out
    # owner team, type, open, acknowledged, escalated, occurrences, oldest raised (age)
    over = table_row(out, "procurement-ops")
    assert over[1:6] == ["over_receipt", "1", "0", "0", "3"]
    assert re.fullmatch(AGE, over[6]), over[6]
    assert table_row(out, "integration-team")[1:6] == ["ownership_violation", "0", "1", "0", "1"]
    assert "accounts-payable │ price_variance" not in out  # closed: no longer backlog
    # team, closed, p50, p90, p99
    overall = table_row(out, "all teams")
    assert overall[1] == "1"
    assert all(re.fullmatch(r"\d+\.\ds|\d+m \d+s|\d+m", cell) for cell in overall[2:5]), overall
    assert table_row(out, "accounts-payable")[1] == "1"

    as_json = await cli("exceptions", "summary", "--json", *address)
    assert as_json.exit_code == 0, as_json.stdout
    document = json.loads(as_json.stdout)
    assert document["closure_by_team"]["accounts-payable"]["closed"] == "1"  # int64: a string in protobuf's JSON
    assert document["closure"]["p50_seconds"] > 0
    assert {(row["owner_team"], row["type"]) for row in document["backlog"]} == {
        ("procurement-ops", "EXCEPTION_TYPE_OVER_RECEIPT"),
        ("integration-team", "EXCEPTION_TYPE_OWNERSHIP_VIOLATION"),
    }

    team = await cli("exceptions", "summary", "--team", "procurement-ops", *address)
    assert team.exit_code == 0, team.stdout
    assert "backlog of procurement-ops: 1 open, 0 acknowledged, 0 escalated" in team.stdout
    assert "ownership_violation" not in team.stdout
    assert table_row(team.stdout, "procurement-ops")[1] == "over_receipt"


# --- replays: a consumer gives up on a message, a person fixes the cause and replays it ---


@pytest.fixture
async def poisoned(nats_server, valkey_server, clean_env, tmp_path):
    """The router and a sink consumer that fails on every order event (3 deliveries, then handed off)."""
    namespace = unique_namespace()
    policy = fast_retries(tmp_path, 3)
    sink = PoisonedSink()
    sink_settings = erp_sink_settings(nats_server, valkey_server, namespace, policy)
    async with (
        router(router_settings(nats_server, valkey_server, namespace, policy_file=policy)) as (running, stub),
        running_service(sink_settings, sink.wire),
    ):
        yield namespace, sink, Router(running.address, stub, {}, namespace)


async def _exhausted(stub, count: int) -> list[ex.Exception]:
    async def landed():
        rows = await listed(stub, type=ex.EXCEPTION_TYPE_DELIVERY_EXHAUSTED)
        return rows if len(rows) == count and all(row.owner_team for row in rows) else None

    return await eventually(landed)


async def test_replay_of_a_delivery_exhausted_exception_delivers_the_message_once_and_closes_it(nats_server, poisoned):
    namespace, sink, exceptions = poisoned
    address = ("--address", exceptions.address)
    sequence, data = await publish_order_event(nats_server, namespace, "PO-POISON")
    exception_id = (await _exhausted(exceptions.stub, 1))[0].exception_id

    shown = await cli("exceptions", "show", exception_id, *address)
    assert shown.exit_code == 0, shown.stdout
    out = shown.stdout
    assert table_row(out, "type")[1] == "delivery_exhausted"
    assert table_row(out, "owner team")[1] == "integration-team"
    assert table_row(out, "original message")[1] == f"{namespace}.po.PO-POISON.published; {len(data)} bytes"
    assert table_row(out, "stream")[1] == f"{namespace.upper()}_PO sequence {sequence}"
    assert table_row(out, "consumer")[1] == f"{namespace}-erp-sink-orders, 3 deliveries"
    assert "no mapping for unit of measure 'PF'" in table_row(out, "last error")[1]
    as_json = await cli("exceptions", "show", exception_id, "--json", *address)
    assert json.loads(as_json.stdout)["original_message"]["stream_sequence"] == str(sequence)

    sink.broken = False  # a person fixed the cause
    replayed = await cli("exceptions", "replay", exception_id, "--reason", "PF mapped", "--person", "j.doe", *address)
    assert replayed.exit_code == 0, replayed.stdout
    found = re.match(
        rf"{exception_id}: replay requested \(stream sequence (\d+), to {namespace}-erp-sink-orders\)", replayed.stdout
    )
    assert found, replayed.stdout

    async def closed():
        got = await exceptions.get(exception_id)
        return got if got.state == ex.EXCEPTION_STATE_REPLAYED else None

    done = await eventually(closed)
    assert done.replay.stream_sequence == int(found[1])
    assert [(seq, body) for seq, body, _ in sink.processed] == [(sequence, data)]
    again = await cli("exceptions", "replay", exception_id, "--reason", "PF mapped", "--person", "j.doe", *address)
    assert again.exit_code == 0, again.stdout
    assert again.stdout.startswith(f"{exception_id}: replayed already (stream sequence {found[1]})")
    shown = await cli("exceptions", "show", exception_id, *address)
    assert table_row(shown.stdout, "state")[1] == "replayed"
    assert table_row(shown.stdout, "replay")[1].startswith("requested by j.doe at ")
    await asyncio.sleep(0.5)
    assert len(sink.processed) == 1  # pressed twice: delivered once


async def test_replay_all_matching_asks_first_goes_on_after_a_refusal_and_replays_each(nats_server, poisoned):
    namespace, sink, exceptions = poisoned
    address = ("--address", exceptions.address)
    for po_id in ("PO-A", "PO-B"):
        await publish_order_event(nats_server, namespace, po_id)
    rows = await _exhausted(exceptions.stub, 2)
    ids = [row.exception_id for row in rows]
    bulk = ("exceptions", "replay", "--all-matching", "--type", "delivery_exhausted", "--team", "integration-team")
    who = ("--reason", "PF mapped to pallets", "--person", "j.doe")

    declined = await cli(*bulk, *who, *address, stdin="n\n")
    assert declined.exit_code == 1, declined.stdout
    assert "2 exception(s) to replay (team integration-team, type delivery_exhausted, unresolved)" in declined.stdout
    assert all(exception_id in declined.stdout for exception_id in ids)
    assert "nothing was replayed" in declined.stdout
    assert not any([(await exceptions.get(i)).HasField("replay") for i in ids])

    # Through a system without the right: each is tried, each refused, and the count says so.
    refused = await cli(*bulk, *who, "--yes", "--system", "erp", *address)
    assert refused.exit_code == 1, refused.stdout
    for exception_id in ids:
        assert re.search(rf"{exception_id}: PERMISSION_DENIED: erp may not write exception_handling", refused.stdout)
    assert "0 of 2 replay(s) requested, 2 failed" in refused.stdout

    sink.broken = False
    done = await cli(*bulk, *who, *address, stdin="y\n")
    assert done.exit_code == 0, done.stdout
    for exception_id in ids:
        assert re.search(rf"{exception_id}: replay requested \(stream sequence \d+", done.stdout), done.stdout
    assert "2 of 2 replay(s) requested, 0 failed" in done.stdout

    async def both_replayed():
        states = [(await exceptions.get(i)).state for i in ids]
        return states == [ex.EXCEPTION_STATE_REPLAYED] * 2

    await eventually(both_replayed)
    assert len(sink.processed) == 2
    nothing = await cli(*bulk, *who, "--yes", *address)
    assert nothing.exit_code == 0, nothing.stdout
    assert "nothing to replay" in nothing.stdout


async def test_an_escalated_exception_is_marked_in_the_list_and_show_says_where_it_went(
    nats_server, valkey_server, clean_env, tmp_path
):
    namespace = unique_namespace()
    policy = policy_with(
        tmp_path,
        "      severity: medium\n      escalate_after: 1d\n",
        "      severity: medium\n      escalate_after: 1s\n      escalate_to: procurement-ops\n",
    )
    settings = router_settings(nats_server, valkey_server, namespace, policy_file=policy)
    async with router(settings) as (running, stub), reporter_for(nats_server, namespace, "invoice-status") as reporter:
        ref = types_pb2.ObjectRef(object_type="invoice", object_key="INV-1")
        await reporter.raise_exception(ex.EXCEPTION_TYPE_PRICE_VARIANCE, ex.SEVERITY_MEDIUM, ref, "4% over")
        exception_id = (await eventually(lambda: routed(listed(stub))))[0].exception_id
        address = ("--address", running.address)
        await eventually(lambda: listed(stub, escalated_only=True))
        result = await cli("exceptions", "list", "--escalated", *address)
        assert result.exit_code == 0, result.stdout
        assert "1 exception(s) (escalated)" in result.stdout
        row = table_row(result.stdout, exception_id)
        assert row[4] == "procurement-ops"
        assert row[8] == "yes (from accounts-payable)"
        shown = await cli("exceptions", "show", exception_id, *address)
        assert re.fullmatch(
            r"escalated at \S+Z from accounts-payable to procurement-ops", table_row(shown.stdout, "escalation")[1]
        )
