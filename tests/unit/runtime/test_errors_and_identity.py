import grpc
import nats.errors
import nats.js.errors
import pytest
import redis.exceptions
from google.rpc import code_pb2, error_details_pb2

from libs.policy.catalog import message_descriptor
from libs.runtime.consumers import backoff_delay
from libs.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    Unauthenticated,
    transient,
)
from libs.runtime.identity import IdentityResolver


def unpack(status, kind):
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


def test_invalid_argument_carries_every_field_violation_and_a_reason():
    error = InvalidArgument(
        "bad order",
        violations=[FieldViolation("lines[0].quantity", "must be positive"), FieldViolation("currency_code", "bad")],
        reason="INVALID_PURCHASE_ORDER",
    )
    status = error.to_status()
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    [bad_request] = unpack(status, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("lines[0].quantity", "must be positive"),
        ("currency_code", "bad"),
    ]
    [info] = unpack(status, error_details_pb2.ErrorInfo)
    assert info.reason == "INVALID_PURCHASE_ORDER"
    assert info.domain == "syncgov.dev"


def test_failed_precondition_names_its_subject():
    status = FailedPrecondition("version 2 is stale", subject="purchase_order/PO-1", reason="STALE_VERSION").to_status()
    [failure] = unpack(status, error_details_pb2.PreconditionFailure)
    assert failure.violations[0].subject == "purchase_order/PO-1"
    assert failure.violations[0].type == "STALE_VERSION"


def test_already_exists_metadata_reaches_the_caller():
    status = AlreadyExists("dup", reason="DUPLICATE_TRANSACTION", metadata={"po_id": "PO-1"}).to_status()
    [info] = unpack(status, error_details_pb2.ErrorInfo)
    assert dict(info.metadata) == {"po_id": "PO-1"}


def test_tokens_map_to_systems_and_unknown_tokens_are_refused():
    resolver = IdentityResolver({"tok-erp": "erp"})
    assert resolver.resolve([("authorization", "Bearer tok-erp")]).system == "erp"
    assert resolver.resolve([("authorization", "Bearer tok-erp")]).authenticated
    for metadata in ([], [("authorization", "Bearer nope")], [("authorization", "Basic tok-erp")]):
        with pytest.raises(Unauthenticated):
            resolver.resolve(metadata)


def test_declared_identity_is_only_used_when_no_tokens_are_configured():
    assert IdentityResolver({}).resolve([("x-syncgov-system", "erp")]).system == "erp"
    assert not IdentityResolver({}).resolve([("x-syncgov-system", "erp")]).authenticated
    assert IdentityResolver({}).resolve([]).system == "anonymous"
    with pytest.raises(Unauthenticated, match="bearer"):
        IdentityResolver({"t": "erp"}).resolve([("x-syncgov-system", "erp")])


def test_backoff_steps_then_repeats_the_last():
    steps = (0.5, 2.0, 10.0)
    assert [backoff_delay(steps, n) for n in (1, 2, 3, 4, 9)] == [0.5, 2.0, 10.0, 10.0, 10.0]


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (nats.errors.TimeoutError(), "BROKER_UNAVAILABLE"),
        (nats.errors.NoRespondersError(), "BROKER_UNAVAILABLE"),
        (nats.js.errors.NoStreamResponseError(), "BROKER_UNAVAILABLE"),
        (redis.exceptions.TimeoutError("frozen"), "STORE_UNAVAILABLE"),
        (redis.exceptions.ConnectionError("refused"), "STORE_UNAVAILABLE"),
        (ConnectionResetError(), "CONNECTION_FAILED"),
        (
            RuntimeError(
                "unable to perform operation on <TCPTransport closed=True reading=False 0x5637e79f0620>; "
                "the handler is closed"
            ),
            "CONNECTION_FAILED",
        ),
    ],
)
def test_infrastructure_faults_are_unavailable_with_retry_info(error, reason):
    unavailable = transient(error)
    assert unavailable is not None
    assert unavailable.reason == reason
    status = unavailable.to_status()
    assert status.code == code_pb2.UNAVAILABLE
    [retry] = [d for d in status.details if d.Is(message_descriptor(error_details_pb2.RetryInfo))]
    info = error_details_pb2.RetryInfo()
    retry.Unpack(info)
    assert info.retry_delay.ToMilliseconds() == 1000


@pytest.mark.parametrize(
    "error", [ValueError("bad"), KeyError("x"), RuntimeError(), RuntimeError("the handler is closed, says the test")]
)
def test_programming_errors_are_not_called_transient(error):
    assert transient(error) is None


def test_an_error_about_a_huge_request_stays_within_the_trailer_budget():
    violations = [FieldViolation(f"lines[{n}].description" + "x" * 5_000, "y" * 5_000) for n in range(10_000)]
    error = InvalidArgument("m" * 100_000, violations=violations, metadata={"k" * 100: "v" * 100_000})
    encoded = error.to_status().SerializeToString()
    assert len(encoded) < 8 * 1024  # gRPC's default soft limit for metadata is 8 KiB
    bad_request = error_details_pb2.BadRequest()
    error.to_status().details[0].Unpack(bad_request)
    assert bad_request.field_violations[-1].description == "and 9985 more problem(s)"
