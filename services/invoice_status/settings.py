"""invoice-status's settings: the runtime's, with its own name and port."""

from __future__ import annotations

from pydantic import Field

from libs.runtime.settings import RuntimeSettings


class Settings(RuntimeSettings):
    service_name: str = "invoice-status"
    grpc_port: int = Field(50054, ge=0, le=65535)
    read_model_check_seconds: float = Field(
        1.0, gt=0, description="How often the blocked list in Valkey is checked for loss and rebuilt from the stream."
    )
