"""The edge interceptor: caller identity, error mapping and RPC metrics for every call.

One interceptor does all three so each request pays for one wrapper, not
three; tracing comes from the OpenTelemetry gRPC instrumentation, installed
before this one so the identity lands on the server span.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_status import rpc_status
from opentelemetry import trace
from opentelemetry.metrics import Meter

from libs.runtime import attributes
from libs.runtime.errors import ServiceError
from libs.runtime.identity import IdentityResolver, reset_caller, set_caller

log = logging.getLogger(__name__)

# Standard services answer every known or unknown caller: probes and tooling have no identity.
EXEMPT_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


class EdgeInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, identity: IdentityResolver, meter: Meter) -> None:
        self._identity = identity
        self._duration = meter.create_histogram(
            "syncgov.rpc.server.duration", unit="s", description="Duration of handled gRPC calls."
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        inner = handler.unary_unary
        metadata = handler_call_details.invocation_metadata

        async def edge(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            outcome = "OK"
            try:
                caller = self._identity.resolve(metadata)
            except ServiceError as error:
                outcome = error.code.name
                await _abort(context, error)
            token = set_caller(caller)
            trace.get_current_span().set_attribute(attributes.CALLER_SYSTEM, caller.system)
            try:
                return await inner(request, context)
            except ServiceError as error:
                outcome = error.code.name
                await _abort(context, error)
            except grpc.aio.AbortError:
                raise
            except Exception:
                outcome = "INTERNAL"
                log.exception("unhandled error in %s", method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the service log for the trace")
            finally:
                reset_caller(token)
                self._duration.record(
                    time.perf_counter() - started, {"rpc.method": method, "rpc.grpc.status_code": outcome}
                )

        return grpc.unary_unary_rpc_method_handler(
            edge,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def _abort(context: grpc.aio.ServicerContext, error: ServiceError) -> None:
    status = rpc_status.to_status(error.to_status())
    await context.abort(status.code, status.details, status.trailing_metadata)
