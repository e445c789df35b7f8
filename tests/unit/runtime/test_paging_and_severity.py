import pytest

from libs.runtime.exception_reporter import severity
from libs.runtime.paging import page_size
from syncgov.exception.v1 import exception_pb2


@pytest.mark.parametrize(("requested", "expected"), [(0, 50), (-3, 50), (10, 10), (500, 500), (9999, 500)])
def test_page_sizes_stay_within_bounds(requested, expected):
    assert page_size(requested) == expected


def test_policy_severity_names_map_to_the_contract():
    assert severity("critical") == exception_pb2.SEVERITY_CRITICAL
    assert severity("low") == exception_pb2.SEVERITY_LOW
    assert severity(None) == exception_pb2.SEVERITY_HIGH
    assert severity("", default=exception_pb2.SEVERITY_LOW) == exception_pb2.SEVERITY_LOW
