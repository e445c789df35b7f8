"""receipt-reconciliation's settings: the runtime's, with its own name and port."""

from __future__ import annotations

from pydantic import Field

from libs.runtime.settings import RuntimeSettings


class Settings(RuntimeSettings):
    service_name: str = "receipt-reconciliation"
    grpc_port: int = Field(50053, ge=0, le=65535)
    read_model_check_seconds: float = Field(
        1.0, gt=0, description="How often the Valkey read models are checked for loss and rebuilt from the stream."
    )
