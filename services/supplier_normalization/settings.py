"""supplier-normalization's settings: the runtime's, plus its match thresholds."""

from __future__ import annotations

from pydantic import Field

from libs.runtime.settings import RuntimeSettings


class Settings(RuntimeSettings):
    service_name: str = "supplier-normalization"
    grpc_port: int = Field(50051, ge=0, le=65535)
    supplier_merge_score: float = Field(92.0, ge=0, le=100, description="Match score at which records merge.")
    supplier_suspect_score: float = Field(
        80.0, ge=0, le=100, description="Match score from which a person decides (duplicate_supplier_suspected)."
    )
