"""invoice-status's settings: the runtime's, with its own name and port."""

from __future__ import annotations

from pydantic import Field

from libs.runtime.settings import RuntimeSettings


class Settings(RuntimeSettings):
    service_name: str = "invoice-status"
    grpc_port: int = Field(50054, ge=0, le=65535)
