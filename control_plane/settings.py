"""control-plane's settings: the runtime's, with its own name and port."""

from __future__ import annotations

from pydantic import Field

from libs.runtime.settings import RuntimeSettings


class Settings(RuntimeSettings):
    service_name: str = "control-plane"
    grpc_port: int = Field(50050, ge=0, le=65535)
    # How often the workflow tracker looks for SLA breaches to raise and completed stages to clear.
    sla_sweep_seconds: float = Field(5.0, gt=0, le=3600)
    # The local web view (control_plane/web.py) on the gRPC host; unset: not served.
    web_port: int | None = Field(None, ge=0, le=65535)
