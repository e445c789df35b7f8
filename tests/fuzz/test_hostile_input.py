"""Hostile input against every RPC of every built component, through the real runtime and real servers.

Requests are generated from each RPC's request descriptor (tests/fuzz/strategies.py), mostly as a valid
seed mutated in one place, and sent as each system the policy knows (and as odd ones) with generic unary
callables; raw bodies are arbitrary or broken bytes. Invariants (tests/fuzz/harness.py): never
INTERNAL, UNKNOWN or DEADLINE_EXCEEDED; INVALID_ARGUMENT names its field violations; no domain event for a
refused request; no request makes the streams grow out of proportion to its size; health SERVING.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, given, seed, settings
from hypothesis import strategies as st

from tests.fuzz.harness import REQUEST_BUDGET, FuzzLog, Target, examples_per_rpc, total_inputs
from tests.fuzz.targets import all_rpcs, fuzzed_components, services_of

RPCS = all_rpcs()
MESSAGES, RAW = examples_per_rpc(RPCS)
NIGHTLY = total_inputs() > 0
SEED = int(os.environ.get("SYNCGOV_FUZZ_SEED", "0") or 0)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.fuzz,
    # Generous: a service that stalls shows up as DEADLINE_EXCEEDED per input, not as a timeout.
    pytest.mark.timeout(60 + 2 * (MESSAGES + RAW)),
]


def fuzz_settings(examples: int):
    """The CI size is seed-fixed (derandomized); `make fuzz` draws fresh inputs unless SYNCGOV_FUZZ_SEED is set."""
    configured = settings(
        max_examples=examples,
        derandomize=not NIGHTLY,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    if NIGHTLY and SEED:
        return lambda test: seed(SEED)(configured(test))
    return configured


def _ids(rpcs):
    return [rpc.name for rpc in rpcs]


@pytest.mark.parametrize(("target", "rpc"), [(rpc.component, rpc) for rpc in RPCS], ids=_ids(RPCS), indirect=["target"])
@fuzz_settings(MESSAGES)
@given(data=st.data())
async def test_hostile_requests(target: Target, rpc, fuzz_log: FuzzLog, data: st.DataObject) -> None:
    request = data.draw(target.requests(rpc), label="request")
    assume(request.ByteSize() <= REQUEST_BUDGET)
    system = data.draw(target.systems(rpc, request), label="system")
    await target.exercise(rpc, request, system, fuzz_log)


@pytest.mark.parametrize(("target", "rpc"), [(rpc.component, rpc) for rpc in RPCS], ids=_ids(RPCS), indirect=["target"])
@fuzz_settings(RAW)
@given(data=st.data())
async def test_raw_bodies(target: Target, rpc, fuzz_log: FuzzLog, data: st.DataObject) -> None:
    body = data.draw(target.raw_requests(rpc), label="body")
    system = data.draw(target.systems(rpc), label="system")
    await target.exercise(rpc, body, system, fuzz_log)


COMPONENTS = [component.name for component in fuzzed_components()]


@pytest.mark.parametrize("target", COMPONENTS, indirect=True)
async def test_every_served_rpc_is_fuzzed_and_the_service_still_serves(target: Target) -> None:
    """Runs after the fuzz of each component: what the server serves (reflection) is what was fuzzed."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub: Any = reflection_pb2_grpc.ServerReflectionStub(target.channel)  # type: ignore[arg-type]
    served: set[str] = set()
    async for answer in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
        served.update(service.name for service in answer.list_services_response.service)
    served -= {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
    fuzzed = {service.full_name for service in services_of(target.component)}
    assert served == fuzzed
    assert await target.health() is None
