"""po-publication's settings: the runtime's, with its own name and port."""

from __future__ import annotations

from pydantic import Field

from libs.runtime.settings import RuntimeSettings


class Settings(RuntimeSettings):
    service_name: str = "po-publication"
    grpc_port: int = Field(50052, ge=0, le=65535)
    hold_sweep_seconds: float = Field(
        1.0, gt=0, description="How often held out-of-order versions are checked against the policy's hold window."
    )
    read_model_check_seconds: float = Field(
        1.0, gt=0, description="How often the Valkey read models are checked for loss and rebuilt from the stream."
    )
    receipt_check_seconds: float = Field(
        0.5,
        gt=0,
        description="How often followed receipts are checked for lines over-received after a change order.",
    )
