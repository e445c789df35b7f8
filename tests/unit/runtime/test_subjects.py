import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.runtime.subjects import InvalidKeyError, Namespace, decode_token, encode_token

VALID_TOKEN = re.compile(r"^[A-Za-z0-9_~-]+$")


@given(st.text(min_size=1, max_size=80))
def test_any_external_id_becomes_a_valid_token_and_comes_back(external_id):
    token = encode_token(external_id)
    assert VALID_TOKEN.match(token)
    assert decode_token(token) == external_id


@given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30))
def test_different_ids_never_share_a_token(first, second):
    if first != second:
        assert encode_token(first) != encode_token(second)


def test_common_ids_stay_readable():
    assert encode_token("PO-2026_0001") == "PO-2026_0001"
    assert encode_token("4500.17/2") == "4500~2E17~2F2"
    assert encode_token("~") == "~7E"


@pytest.mark.parametrize("bad", ["", "x" * 257])
def test_empty_or_huge_ids_are_refused(bad):
    with pytest.raises(InvalidKeyError):
        encode_token(bad)


def test_malformed_token_is_refused():
    with pytest.raises(InvalidKeyError):
        decode_token("abc~zz")


def test_namespace_names_everything_from_one_root():
    ns = Namespace("t1")
    assert ns.stream("po") == "T1_PO"
    assert ns.domain_subjects("po") == "t1.po.>"
    assert ns.object_subject("po", "A.B", "published") == "t1.po.A~2EB.published"
    assert ns.object_filter("po", "A.B") == "t1.po.A~2EB.*"
    assert ns.redis_key("po-publication", "idem", "k") == "t1:po-publication:idem:k"


def test_header_values_keep_printable_keys_and_escape_everything_else_injectively():
    from libs.runtime.subjects import header_value

    assert header_value("procurement:purchase_order:PO-1:v1") == "procurement:purchase_order:PO-1:v1"
    variants = ["k\r\n1", "k\n1", "k\r1", "k 1", "k~0A1", "k\u20221", "k\x001"]
    encoded = [header_value(v) for v in variants]
    assert len(set(encoded)) == len(variants)
    assert all(c.isprintable() and c not in "\r\n " for value in encoded for c in value)
