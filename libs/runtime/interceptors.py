"""The edge interceptor: the server span, caller identity, field bounds, ownership, error mapping and RPC metrics.

One interceptor does all of them so each call pays for one wrapper, and the
wrapper is built once per method, not per call. The server span follows the
OpenTelemetry RPC semantic conventions (``rpc.system``, ``rpc.service``,
``rpc.method``, ``rpc.grpc.status_code``) and continues the caller's W3C trace
context from the request metadata. The duration histogram is the conventions'
``rpc.server.call.duration`` in seconds, with the span's attributes (its
buckets come from the View in ``libs.runtime.telemetry``). It replaces the OpenTelemetry gRPC
instrumentation, which measured at about a tenth of the service's CPU per
call in ``bench/publish_po.py`` (see docs/decisions.md).

Every request is checked against the field bounds of ``libs.runtime.bounds`` once its caller is known and
before ownership is decided, so a request out of bounds is INVALID_ARGUMENT, reaches neither the audit
trail nor the servicer, and writes nothing. A body that does not decode as the method's request message
is INVALID_ARGUMENT too (the deserializer is wrapped: grpc.aio would answer UNKNOWN and log a traceback
per request); it is logged as one WARNING per method at most every
:data:`UNDECODABLE_LOG_INTERVAL_SECONDS`, with how many were refused since.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, cast

import grpc
from google.protobuf.message import Message
from grpc_status import rpc_status
from opentelemetry import propagate, trace
from opentelemetry.metrics import Meter
from opentelemetry.trace import SpanKind, Status, StatusCode

from libs.runtime import attributes
from libs.runtime.bounds import RequestBounds
from libs.runtime.enforcement import OwnershipGuard
from libs.runtime.errors import InvalidArgument, ServiceError, Unimplemented, transient
from libs.runtime.events import current_policy_revision
from libs.runtime.identity import IdentityResolver, reset_caller, set_caller
from libs.runtime.telemetry import RPC_SERVER_DURATION

log = logging.getLogger(__name__)

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
if TYPE_CHECKING:  # grpc's classes are generic only in its typing stubs
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    # What a grpc.aio unary-unary behaviour is at run time (the stubs type it as the sync one).
    UnaryBehaviour: TypeAlias = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]

# Standard services answer every known or unknown caller: probes and tooling have no identity.
EXEMPT_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
_TRACE_HEADERS = ("traceparent", "tracestate", "baggage")
# At most one warning per method this often about request bodies that did not decode.
UNDECODABLE_LOG_INTERVAL_SECONDS = 60.0


class Undecodable:
    """What the wrapped deserializer hands the behaviour in place of a request whose bytes did not decode."""

    __slots__ = ("error", "size")

    def __init__(self, error: Exception, size: int) -> None:
        self.error = error
        self.size = size


class EdgeInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, identity: IdentityResolver, guard: OwnershipGuard, meter: Meter, tracer: trace.Tracer) -> None:
        self._identity = identity
        self._guard = guard
        self._tracer = tracer
        self._duration = meter.create_histogram(
            RPC_SERVER_DURATION, unit="s", description="Measures the duration of an incoming RPC."
        )
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}
        self._bounds = RequestBounds()
        # Per method: when an undecodable body was last logged, and how many were refused since.
        self._undecodable_log: dict[str, tuple[float, int]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Request, _Response] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Request, _Response] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def wrap(self, method: str, handler: Handler) -> Handler:
        """The handler with the edge around it; health and reflection (and streams) are left alone."""
        if handler.unary_unary is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        deserializer = handler.request_deserializer
        request_type = getattr(deserializer, "__self__", None)  # a generated FromString is bound to its class
        workflow: tuple[str, ...] = ()
        if isinstance(request_type, type) and issubclass(request_type, Message):
            self._bounds.prepare(request_type)  # walkers built now, not by the first call
            workflow = workflow_fields(request_type)
        return grpc.unary_unary_rpc_method_handler(
            self._edge(method, cast("UnaryBehaviour", handler.unary_unary), workflow),
            request_deserializer=_tolerant(deserializer) if deserializer is not None else None,
            response_serializer=handler.response_serializer,
        )

    def _undecodable(self, method: str, request: Undecodable) -> InvalidArgument:
        """INVALID_ARGUMENT for a body that did not decode, logged at most once per interval and method."""
        now = time.monotonic()
        last, refused = self._undecodable_log.get(method, (-UNDECODABLE_LOG_INTERVAL_SECONDS, 0))
        if now - last >= UNDECODABLE_LOG_INTERVAL_SECONDS:
            log.warning(
                "%s: refused %d request body(ies) that did not decode (INVALID_ARGUMENT); latest %d bytes: %s",
                method,
                refused + 1,
                request.size,
                request.error,
            )
            self._undecodable_log[method] = (now, 0)
        else:
            self._undecodable_log[method] = (last, refused + 1)
        return InvalidArgument(
            f"the request body is not a valid {method.rpartition('/')[2]} request message "
            "(it could not be decoded as protocol buffers); nothing was written",
            reason="UNDECODABLE_REQUEST",
        )

    def _edge(self, method: str, inner: UnaryBehaviour, workflow: tuple[str, ...] = ()) -> UnaryBehaviour:
        service, _, rpc = method.lstrip("/").partition("/")
        span_attributes: dict[str, str | int] = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}
        # One attribute set per status code, built once: the metric's attributes are the span's.
        metric_attributes: dict[grpc.StatusCode, dict[str, str | int]] = {
            code: {**span_attributes, "rpc.grpc.status_code": code.value[0]} for code in grpc.StatusCode
        }

        async def edge(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            metadata = cast(tuple[tuple[str, str | bytes], ...], tuple(context.invocation_metadata() or ()))
            carrier = {key: value for key, value in metadata if key in _TRACE_HEADERS}
            parent = propagate.extract(carrier) if carrier else None
            outcome = grpc.StatusCode.OK
            with self._tracer.start_as_current_span(
                method,
                context=parent,
                kind=SpanKind.SERVER,
                attributes=span_attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                token = revision_token = None
                try:
                    auth = (
                        cast(dict[str, list[bytes]], context.auth_context())
                        if self._identity.uses_certificates
                        else None
                    )
                    caller = self._identity.resolve(metadata, auth)
                    token = set_caller(caller)
                    span.set_attribute(attributes.CALLER_SYSTEM, caller.system)
                    if isinstance(request, Message):
                        self._bounds.check(request)
                    elif isinstance(request, Undecodable):
                        raise self._undecodable(method, request)
                    policy = await self._guard.authorize(method, request, caller)
                    revision_token = current_policy_revision.set(policy.revision)
                    span.set_attribute(attributes.POLICY_REVISION, policy.revision)
                    if workflow and span.is_recording():
                        _workflow_attributes(span, request, workflow)
                    return await inner(request, context)
                except ServiceError as error:
                    outcome = error.code
                    await _abort(context, error)
                except grpc.aio.AbortError:
                    aborted = cast(grpc.StatusCode | None, context.code())  # None when abort set no code
                    outcome = aborted if aborted is not None else grpc.StatusCode.UNKNOWN
                    raise
                except Exception as error:
                    span.record_exception(error)
                    if context.cancelled() or type(error).__name__ == "ExecuteBatchError":
                        # The caller went away first (a cut connection, a deadline): there is nobody to answer, and
                        # what failed was sending to it (gRPC's core refusing the batch: ExecuteBatchError, a class
                        # of its private Cython module) or work it no longer waits for, not the service.
                        outcome = grpc.StatusCode.CANCELLED
                        log.info("%s: the caller went away before its answer (%s)", method, type(error).__name__)
                        raise
                    if isinstance(error, NotImplementedError):  # the generated base of an RPC not served yet
                        outcome = grpc.StatusCode.UNIMPLEMENTED
                        await _abort(context, Unimplemented(f"{method} is not implemented in this release"))
                    unavailable = transient(error)
                    if unavailable is not None:  # the broker or Valkey did not answer: the caller retries
                        outcome = unavailable.code
                        log.warning("%s: %s", method, unavailable.message)
                        await _abort(context, unavailable)
                    outcome = grpc.StatusCode.INTERNAL
                    log.exception("unhandled error in %s", method)
                    await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the service log for the trace")
                finally:
                    if token is not None:
                        reset_caller(token)
                    if revision_token is not None:
                        current_policy_revision.reset(revision_token)
                    code = outcome.value[0]
                    span.set_attribute("rpc.grpc.status_code", code)
                    if outcome in _SERVER_FAULTS:
                        span.set_status(Status(StatusCode.ERROR, outcome.name))
                    self._duration.record(time.perf_counter() - started, metric_attributes[outcome])

        return edge


# Per the RPC semantic conventions, only these codes mark a server span as an error.
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def workflow_fields(request_type: type[Message]) -> tuple[str, ...]:
    """The top-level fields of a request that name a PO's workflow: ``po_id`` (the workflow key) and, beside it,
    ``version`` (the object version); () when it has no ``po_id``. Read once per method."""
    fields = request_type.DESCRIPTOR.fields_by_name
    if "po_id" not in fields:
        return ()
    return ("po_id", "version") if "version" in fields else ("po_id",)


def _workflow_attributes(span: trace.Span, request: Any, fields: tuple[str, ...]) -> None:
    """``syncgov.workflow.key`` (and ``.object.version``) from a request that names the PO (AcknowledgePurchaseOrder,
    RejectPurchaseOrder, GetPurchaseOrder ...); a servicer that knows better sets them again."""
    key = getattr(request, fields[0], "")
    if isinstance(key, str) and key:
        span.set_attribute(attributes.WORKFLOW_KEY, key)
    version = getattr(request, fields[1], 0) if len(fields) > 1 else 0
    if isinstance(version, int) and version:
        span.set_attribute(attributes.OBJECT_VERSION, version)


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``deserializer`` answering :class:`Undecodable` instead of raising, so the edge can refuse the call."""

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # DecodeError, and whatever else a parser raises on hostile bytes
            return Undecodable(error, len(data))

    return deserialize


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: ServiceError) -> None:
    status = rpc_status.to_status(error.to_status())
    await context.abort(status.code, status.details, status.trailing_metadata)
