"""Telemetry set-up: the environment names the service, durations get second-scale buckets. No sockets."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME

from libs.runtime.telemetry import DURATION_BUCKETS, RPC_SERVER_DURATION, service_resource, setup_telemetry


def test_code_names_the_service_when_the_environment_does_not(clean_env: pytest.MonkeyPatch) -> None:
    assert service_resource("po-publication").attributes[SERVICE_NAME] == "po-publication"


def test_otel_service_name_wins_over_the_code_default(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OTEL_SERVICE_NAME", "po-publication-canary")
    assert service_resource("po-publication").attributes[SERVICE_NAME] == "po-publication-canary"


def test_otel_resource_attributes_win_over_the_code_default(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes,deployment.environment.name=staging")
    attributes = service_resource("po-publication").attributes
    assert attributes[SERVICE_NAME] == "from-attributes"
    assert attributes["deployment.environment.name"] == "staging"


def test_otel_service_name_wins_over_otel_resource_attributes(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes")
    clean_env.setenv("OTEL_SERVICE_NAME", "from-service-name")
    assert service_resource("po-publication").attributes[SERVICE_NAME] == "from-service-name"


def test_the_providers_carry_the_environment_resource(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OTEL_SERVICE_NAME", "renamed")
    telemetry = setup_telemetry("po-publication")
    try:
        assert telemetry.tracer_provider.resource.attributes[SERVICE_NAME] == "renamed"
    finally:
        telemetry.shutdown()


def test_rpc_durations_in_seconds_spread_over_second_scale_buckets(clean_env: pytest.MonkeyPatch) -> None:
    reader = InMemoryMetricReader()
    telemetry = setup_telemetry("po-publication", metric_readers=[reader])
    try:
        histogram = telemetry.meter.create_histogram(RPC_SERVER_DURATION, unit="s")
        for seconds in (0.0004, 0.003, 0.003, 0.03, 2.0):
            histogram.record(seconds, {"rpc.method": "PublishPurchaseOrder"})
        data = reader.get_metrics_data()
    finally:
        telemetry.shutdown()
    assert data is not None
    (point,) = [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == RPC_SERVER_DURATION
        for point in metric.data.data_points
    ]
    assert isinstance(point, HistogramDataPoint)
    assert tuple(point.explicit_bounds) == DURATION_BUCKETS
    assert DURATION_BUCKETS[0] == 0.001
    counts = dict(zip([*DURATION_BUCKETS, float("inf")], point.bucket_counts, strict=True))
    assert counts[0.001] == 1  # 0.4 ms
    assert counts[0.005] == 2  # 3 ms twice
    assert counts[0.05] == 1  # 30 ms
    assert counts[2.5] == 1  # 2 s
    assert point.count == 5
