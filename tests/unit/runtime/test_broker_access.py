"""The broker permission model (DESIGN rule 11, docs/security.md) as data: no sockets."""

from __future__ import annotations

import pytest

from libs.runtime.broker_access import (
    COMPONENT_USERS,
    publish_allow,
    replace_credentials,
    role,
    valkey_acl_rules,
    without_credentials,
)
from services.invoice_status.settlement import MARKS_BUCKET

OWN = {
    "po-publication": "sg.po.>",
    "supplier-normalization": "sg.supplier.>",
    "control-plane": "sg.audit.>",
}
DOMAINS = ("po", "supplier", "receipt", "invoice", "audit")


@pytest.mark.parametrize("component", list(OWN))
def test_a_component_publishes_its_domain_and_the_inboxes_only(component):
    allowed = publish_allow(component, "sg")
    assert OWN[component] in allowed
    assert "sg.auditin.>" in allowed
    # Of the exception stream, raises, clearings and processed replays only: the router's transitions are its own.
    assert {"sg.exception.*.raised", f"sg.exception.{component}.cleared", "sg.exception.*.replayed"} <= set(allowed)
    assert "sg.exception.*.cleared" not in allowed  # a clearing's subject names who cleared
    assert "sg.exception.>" not in allowed
    others = [f"sg.{d}.>" for d in DOMAINS if f"sg.{d}.>" != OWN[component]]
    assert not set(others) & set(allowed)
    assert not [s for s in allowed if s.startswith(("sg.>", ">", "_INBOX", "$JS.API.STREAM.DELETE"))]
    assert not [s for s in allowed if "PURGE" in s or "MSG.DELETE" in s or "CONSUMER.DELETE" in s]
    assert ("$KV.sg_policy.>" in allowed) == (component == "control-plane")
    # invoice-status's marks: written, and the bucket created and updated, by invoice-status alone.
    marks = {
        "$KV.sg_invoice_marks.>",
        "$JS.API.STREAM.CREATE.KV_sg_invoice_marks",
        "$JS.API.STREAM.UPDATE.KV_sg_invoice_marks",
    }
    assert (marks <= set(allowed)) == (component == "invoice-status")
    assert not (marks & set(allowed)) or component == "invoice-status"
    # Drift repairs: the control plane alone asks adapters to repair (docs/decisions.md, "Drift").
    assert ("sg.repair.>" in allowed) == (component == "control-plane")


def test_the_exception_router_alone_writes_every_exception_subject():
    assert "sg.exception.>" in publish_allow("exception-router", "sg")
    assert "$JS.API.STREAM.UPDATE.SG_ADVISORY" in publish_allow("exception-router", "sg")


def test_stream_updates_only_for_owned_streams():
    assert [s for s in publish_allow("po-publication", "sg") if ".UPDATE." in s] == ["$JS.API.STREAM.UPDATE.SG_PO"]
    assert not [s for s in publish_allow("po-publication", None) if ".UPDATE." in s]  # any namespace: nobody's


def test_every_component_has_a_valkey_user_limited_to_its_keys():
    for component in COMPONENT_USERS:
        rules = valkey_acl_rules(component, "sg")
        assert f"~sg:{component}:*" in rules
        assert "-@dangerous" in rules
        assert [r for r in rules if r.startswith("~")] == [f"~sg:{component}:*"]


def test_credentials_in_urls_are_replaced_and_never_printed():
    url = replace_credentials("nats://a:1,nats://old:pw@b:2", "po-publication", "p@ss word")
    assert url == "nats://po-publication:p%40ss%20word@a:1,nats://po-publication:p%40ss%20word@b:2"
    assert without_credentials(url) == "nats://a:1,nats://b:2"
    assert replace_credentials("redis://u:x@h:1/0", None, "y") == "redis://u:y@h:1/0"
    assert replace_credentials("redis://h:1/0", None, None) == "redis://h:1/0"


def test_only_the_control_plane_publishes_repairs_and_updates_their_stream():
    for component in COMPONENT_USERS:
        allowed = publish_allow(component, "sg")
        mine = component == "control-plane"
        assert ("sg.repair.>" in allowed) == mine, component
        assert ("$JS.API.STREAM.UPDATE.SG_REPAIR" in allowed) == mine, component
        assert "$JS.API.STREAM.CREATE.SG_REPAIR" in allowed  # any component may create a missing stream


def test_invoice_status_writes_the_bucket_its_settlement_keeps_its_mark_in():
    assert role("invoice-status").kv_buckets == (MARKS_BUCKET,)
