import base64

import grpc
import pytest
from google.rpc import error_details_pb2

from libs.runtime.errors import InvalidArgument
from libs.runtime.paging import PAGE_TOKEN_FIELD, decode_page_token, encode_page_token


@pytest.mark.parametrize("position", [0, 1, 42, 2**63 - 1])
def test_a_token_carries_its_position_back(position):
    token = encode_page_token("controlplane.audit_trail", position)
    assert decode_page_token("controlplane.audit_trail", token) == position


def test_a_token_is_opaque_and_url_safe():
    token = encode_page_token("po.unacknowledged", 120)
    assert not token.isdigit()
    assert "120" not in token
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_no_token_is_the_first_page():
    assert decode_page_token("controlplane.audit_trail", "") is None


def _refusal(listing: str, token: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(listing, token)
    return caught.value


def test_a_token_from_another_listing_is_refused():
    token = encode_page_token("controlplane.policy_revisions", 7)
    error = _refusal("controlplane.audit_trail", token)
    assert "another listing" in error.message


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "token",
    [
        "12",  # the integers tokens used to be
        "not base64 !",
        "%%%",
        _b64(b"\xff\xfe"),  # not UTF-8
        _b64(b"2:x:3"),  # a format version this server does not know
        _b64(b"1:x:-3"),
        _b64(b"1:x:3.5"),
        _b64(b"1:x:"),
        _b64(b"1:x:" + b"9" * 30),
        _b64("1:x:١٢".encode()),  # non-ASCII digits
    ],
)
def test_a_malformed_token_is_invalid_argument_on_the_page_token_field(token):
    error = _refusal("x", token)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_PAGE_TOKEN"
    assert [v.field for v in error.violations] == [PAGE_TOKEN_FIELD]
    bad_request = error_details_pb2.BadRequest()
    assert error.details()[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "page.page_token"


@pytest.mark.parametrize(("listing", "position"), [("", 1), ("a:b", 1), ("x", -1)])
def test_encoding_refuses_what_it_could_not_decode(listing, position):
    with pytest.raises(ValueError, match=r"never negative|non-empty"):
        encode_page_token(listing, position)
