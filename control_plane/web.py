"""The local web view: one read-only page and its JSON, for a person running the suite without Grafana.

Served on ``SYNCGOV_WEB_PORT`` (unset: off) at the gRPC host, in the control plane's event loop. Nothing here
decides anything: the numbers are the workflow tracker's, the timeline is ``GetWorkflow``'s, translated to JSON.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp

from control_plane.tracker import WorkflowTracker
from libs.runtime.app import StartupError
from libs.runtime.bounds import RequestBounds
from libs.runtime.errors import InvalidArgument, NotFound
from syncgov.common.v1 import types_pb2
from syncgov.controlplane.v1 import controlplane_pb2 as cp
from syncgov.controlplane.v1 import controlplane_service_pb2 as cps

log = logging.getLogger(__name__)

ASSETS = Path(__file__).with_name("web")
# The page and its script and style, served from files beside it (nothing inline, so the policy can forbid inline).
FILES = {
    "/": ("index.html", "text/html"),
    "/page.js": ("page.js", "text/javascript"),
    "/page.css": ("page.css", "text/css"),
}
MAX_QUERY = 64
MAX_LIMIT = 200
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
BOUNDS = RequestBounds()

# The servicer's GetWorkflow (the timeline with the tracker's state and breaches); raises NotFound, InvalidArgument.
GetWorkflow = Callable[[cps.GetWorkflowRequest, Any], Awaitable[cps.GetWorkflowResponse]]


def when(stamp: Timestamp) -> str:
    return datetime.fromtimestamp(stamp.ToNanoseconds() / 1e9, UTC).isoformat()


def object_of(ref: types_pb2.ObjectRef) -> dict[str, Any]:
    return {"type": ref.object_type, "key": ref.object_key, "version": ref.version}


def workflow_json(workflow: cp.Workflow) -> dict[str, Any]:
    return {
        "key": workflow.workflow_key,
        "state": workflow.state,
        "stuck": workflow.stuck,
        "stages": [
            {
                "stage": cp.WorkflowStage.Name(record.stage).removeprefix("WORKFLOW_STAGE_").lower(),
                "event": record.event,
                "object": object_of(record.object),
                "version": record.version,
                "when": when(record.reached_at),
                "when_ms": record.reached_at.ToMilliseconds(),
                "detail": record.detail,
                "trace_id": record.trace_id,
                "propagation_seconds": (
                    record.propagation_time.ToNanoseconds() / 1e9 if record.HasField("propagation_time") else None
                ),
            }
            for record in workflow.stages
        ],
        "breaches": [
            {
                "stage": breach.stage,
                "object": object_of(breach.object),
                "waiting_since": when(breach.waiting_since),
                "limit_seconds": breach.limit.ToNanoseconds() / 1e9,
                "criticality": breach.criticality,
                "exception_id": breach.exception_id,
            }
            for breach in workflow.breaches
        ],
    }


class WebView:
    def __init__(self, tracker: WorkflowTracker, get_workflow: GetWorkflow, host: str, port: int) -> None:
        self._tracker = tracker
        self._get_workflow = get_workflow
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.app = web.Application(middlewares=[self._only_this_host])
        for path in FILES:
            self.app.router.add_get(path, self.asset)
        self.app.router.add_get("/api/summary", self.summary)
        self.app.router.add_get("/api/workflows", self.workflows)
        self.app.router.add_get("/api/workflows/{key}", self.workflow)

    async def start(self) -> None:
        """Listen (a start-up step): a port that cannot be bound fails the start, as the metrics port does."""
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except OSError as error:
            await runner.cleanup()
            raise StartupError(
                f"cannot serve the web view on {self._host}:{self._port} (SYNCGOV_WEB_PORT): {error.strerror or error}"
            ) from None
        self._runner = runner
        log.info("web view on http://%s:%s/", self._host, self._port)

    async def serve(self) -> None:
        """The service's background work: hold until cancelled (the service stopping), then close the listener and
        every connection."""
        try:
            await asyncio.Event().wait()
        finally:
            if self._runner is not None:
                await self._runner.cleanup()

    @web.middleware
    async def _only_this_host(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Answer only requests addressed to this server by name: with no authentication, a page elsewhere that
        points a name of its own at 127.0.0.1 (DNS rebinding) must not read the workflows."""
        host = request.headers.get("Host", "")
        allowed = {f"{name}:{self._port}" for name in (*LOOPBACK_NAMES, self._host)}
        if host not in allowed:
            return web.json_response(
                {"error": f"Host {host[:100]!r} is not this server; use http://127.0.0.1:{self._port}/"},
                status=421,
                headers=HEADERS,
            )
        response: web.StreamResponse = await handler(request)
        return response

    async def asset(self, request: web.Request) -> web.Response:
        name, content_type = FILES[request.path]
        return web.Response(text=(ASSETS / name).read_text(), content_type=content_type, headers=HEADERS)

    async def summary(self, request: web.Request) -> web.Response:
        stages = self._tracker.waiting_by_stage()
        return web.json_response(
            {
                "workflows": self._tracker.counts(),
                "stages": {stage: {"waiting": waits, "stuck": late} for stage, (waits, late) in stages.items()},
                "caught_up": self._tracker.caught_up,
            },
            headers=HEADERS,
        )

    async def workflows(self, request: web.Request) -> web.Response:
        query = request.query.get("q", "").strip()
        try:
            limit = int(request.query.get("limit", "50"))
        except ValueError:
            limit = 0
        if len(query) > MAX_QUERY or not 1 <= limit <= MAX_LIMIT:
            return web.json_response(
                {"error": f"q: at most {MAX_QUERY} characters; limit: 1 to {MAX_LIMIT}"}, status=400, headers=HEADERS
            )
        stuck = {each.progress.key for each in self._tracker.stuck()}
        keys = sorted(key for key in self._tracker.progress if key.upper().startswith(query.upper()))
        rows = [{"key": key, "state": self._tracker.progress[key].state, "stuck": key in stuck} for key in keys[:limit]]
        return web.json_response({"workflows": rows, "more": len(keys) > limit}, headers=HEADERS)

    async def workflow(self, request: web.Request) -> web.Response:
        wanted = cps.GetWorkflowRequest(workflow_key=request.match_info["key"])
        # The gRPC edge's bounds, which this door does not pass through.
        found = BOUNDS.violations(wanted)
        if found:
            return web.json_response(
                {"error": "; ".join(f"{v.field} {v.description}" for v in found)}, status=400, headers=HEADERS
            )
        try:
            answer = await self._get_workflow(wanted, None)
        except NotFound as error:
            return web.json_response({"error": str(error)}, status=404, headers=HEADERS)
        except InvalidArgument as error:
            return web.json_response({"error": str(error)}, status=400, headers=HEADERS)
        return web.json_response(workflow_json(answer.workflow), headers=HEADERS)
