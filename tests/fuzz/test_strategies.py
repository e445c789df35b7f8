"""The strategy builder on its own (no sockets): every request of every fuzzed RPC builds and serializes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import invoices, receipts
from tests.fuzz.harness import REQUEST_BUDGET
from tests.fuzz.strategies import MessageStrategies, decimal_strings, raw_bodies
from tests.fuzz.targets import all_rpcs

pytestmark = pytest.mark.fuzz

RPCS = all_rpcs()
BUILDER = MessageStrategies()


def test_every_built_component_has_rpcs_to_fuzz() -> None:
    components = {rpc.component for rpc in RPCS}
    assert {
        "po-publication",
        "supplier-normalization",
        "control-plane",
        "receipt-reconciliation",
        "invoice-status",
    } <= components


def test_every_receipt_rpc_has_a_structured_strategy() -> None:
    inputs = {rpc.method.input_type.full_name for rpc in RPCS if rpc.component == "receipt-reconciliation"}
    assert set(receipts.structured()) == inputs


@settings(max_examples=60, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_requests_of_every_rpc_build_and_serialize(data: st.DataObject) -> None:
    rpc = data.draw(st.sampled_from(RPCS))
    request = data.draw(BUILDER.requests(rpc.method.input_type))
    assert isinstance(request, rpc.request_class())
    body = request.SerializeToString()
    if len(body) <= REQUEST_BUDGET:
        assert rpc.request_class().FromString(body) == request


def test_every_invoice_rpc_has_a_structured_strategy() -> None:
    inputs = {rpc.method.input_type.full_name for rpc in RPCS if rpc.component == "invoice-status"}
    assert len(inputs) == 6
    assert set(invoices.structured()) == inputs


STRUCTURED = sorted(
    [
        *receipts.structured(["MTpyZWNlaXB0LmZpbmRpbmdzOmM6MXxlcnAvR1ItRlotMQ"]).items(),
        *invoices.structured(invoices.crafted_tokens()[:1]).items(),
    ]
)


@settings(max_examples=60, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_structured_requests_build_and_serialize(data: st.DataObject) -> None:
    name, strategy = data.draw(st.sampled_from(STRUCTURED))
    request = data.draw(strategy)
    assert request.DESCRIPTOR.full_name == name
    assert type(request).FromString(request.SerializeToString()) == request


@settings(max_examples=30, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=decimal_strings(), body=raw_bodies([b"\x0a\x03abc"]))
def test_decimals_and_raw_bodies_are_strings_and_bytes(value: str, body: bytes) -> None:
    assert isinstance(value, str)
    assert isinstance(body, bytes)
