"""exception-router's settings: the runtime's, with its own name, port and sweep interval."""

from __future__ import annotations

from pydantic import Field

from libs.runtime.settings import RuntimeSettings


class Settings(RuntimeSettings):
    service_name: str = "exception-router"
    grpc_port: int = Field(50055, ge=0, le=65535)
    sweep_seconds: float = Field(
        1.0, gt=0, le=3600, description="How often overdue exceptions are escalated and a new policy re-routes."
    )
    catch_up_seconds: float = Field(
        300.0, gt=0, description="Longest the start waits for the exception book to read the stream before serving."
    )
