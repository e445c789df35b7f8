"""Asking a running syncgov process what it serves: health and reflection, as any gRPC tool would."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


async def health_status(channel: grpc.aio.Channel, service: str = "", deadline_seconds: float = 2.0) -> str:
    """``SERVING``, ``NOT_SERVING``, ... or the gRPC status code name when the check itself fails."""
    try:
        # types-grpcio-health-checking's HealthStub declares its constructor but none of its methods.
        answer = await health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
            health_pb2.HealthCheckRequest(service=service), timeout=deadline_seconds
        )
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


async def reflected_services(channel: grpc.aio.Channel, deadline_seconds: float = 2.0) -> list[str]:
    """The service names the server lists through grpc.reflection (what grpcurl's ``list`` shows)."""
    # types-grpcio-reflection types the stub for sync channels only and leaves its method untyped;
    # the generated stub works with grpc.aio channels as with any other.
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
    call = stub.ServerReflectionInfo(  # type: ignore[operator]
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=deadline_seconds
    )
    names: list[str] = []
    async for response in call:
        names.extend(service.name for service in response.list_services_response.service)
    return sorted(names)
