"""Settings every syncgov process reads from ``SYNCGOV_*`` environment variables.

Each service subclasses :class:`RuntimeSettings` for its own variables and its
default gRPC port. Defaults point at loopback infrastructure only; nothing
secret has a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The shipped default policy; the container image sets SYNCGOV_POLICY_FILE to its copy.
DEFAULT_POLICY_FILE = Path(__file__).resolve().parents[2] / "deploy" / "policy" / "default.yaml"


class RuntimeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SYNCGOV_", extra="ignore", frozen=True)

    service_name: str = Field("syncgov", description="Name in logs, traces and metrics.")
    grpc_host: str = Field("127.0.0.1", description="Address the gRPC server binds.")
    grpc_port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus /metrics port; unset disables the endpoint."
    )
    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server URL(s), comma-separated.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis/Valkey URL.")
    # DESIGN rule 11: each component has its own broker identity (docs/security.md). User and password
    # may also ride in the URLs (nats://user:password@host:4222); these fields win over the URLs.
    nats_user: str | None = Field(None, description="NATS user of this component (its component name).")
    nats_password: SecretStr | None = Field(None, description="NATS password; no default.")
    nats_password_file: Path | None = Field(None, description="File holding the NATS password (a mounted Secret).")
    redis_user: str | None = Field(None, description="Valkey ACL user of this component (its component name).")
    redis_password: SecretStr | None = Field(None, description="Valkey password; no default.")
    redis_password_file: Path | None = Field(None, description="File holding the Valkey password (a mounted Secret).")
    namespace: str = Field(
        "sg",
        pattern=r"^[a-z][a-z0-9]{0,15}$",
        description="Root of every subject (<ns>.po.>), stream name (<NS>_PO) and key (<ns>:service:).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest gRPC request or response accepted.")
    shutdown_grace_seconds: float = Field(10.0, ge=0, description="Time in-flight RPCs get on SIGTERM.")
    connect_attempts: int = Field(30, ge=1, description="Tries to reach NATS and Valkey at start-up.")
    connect_backoff_seconds: float = Field(0.5, gt=0, description="Wait between connection tries.")
    stream_replicas: int = Field(1, ge=1, le=5, description="JetStream replicas per stream (3 in production).")
    publish_timeout_seconds: float = Field(5.0, gt=0, description="Wait for a JetStream publish ack.")
    redis_timeout_seconds: float = Field(
        2.0,
        gt=0,
        description="Longest a Valkey call waits: a watchdog then drops its connections (UNAVAILABLE, no hang).",
    )
    state_cache_mb: int = Field(
        192,
        ge=0,
        le=65_536,
        description="Memory for folded object states kept by the command handler (0: none; every write reads).",
    )
    idempotency_ttl_seconds: int = Field(
        7 * 24 * 3600, ge=60, description="How long stored responses replay from Valkey before the stream answers."
    )
    caller_tokens: dict[str, str] = Field(
        default_factory=dict,
        description='Bearer token -> system id, JSON, e.g. {"tok-erp": "erp"}; empty enables declared identities.',
    )
    policy_file: Path = Field(
        DEFAULT_POLICY_FILE,
        description="Policy in force (as revision 0) until one is applied through the control plane.",
    )
    tls_cert_file: Path | None = Field(None, description="Server certificate (PEM); set with the key to serve TLS.")
    tls_key_file: Path | None = Field(None, description="Server private key (PEM).")
    tls_client_ca_file: Path | None = Field(
        None, description="CA that signs client certificates; set to require mTLS (the certificate's CN is the system)."
    )

    @model_validator(mode="after")
    def _tls_files_come_together(self) -> RuntimeSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("SYNCGOV_TLS_CERT_FILE and SYNCGOV_TLS_KEY_FILE are set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("SYNCGOV_TLS_CLIENT_CA_FILE needs SYNCGOV_TLS_CERT_FILE and SYNCGOV_TLS_KEY_FILE")
        return self

    @model_validator(mode="after")
    def _one_password_source(self) -> RuntimeSettings:
        for broker in ("nats", "redis"):
            if getattr(self, f"{broker}_password") is not None and getattr(self, f"{broker}_password_file") is not None:
                name = f"SYNCGOV_{broker.upper()}_PASSWORD"
                raise ValueError(f"set {name} or {name}_FILE, not both")
        return self

    def nats_secret(self) -> str | None:
        """The NATS password from the environment or its file; None when the URL carries it (or none)."""
        return _secret(self.nats_password, self.nats_password_file)

    def redis_secret(self) -> str | None:
        """The Valkey password from the environment or its file; None when the URL carries it (or none)."""
        return _secret(self.redis_password, self.redis_password_file)

    @property
    def stream_prefix(self) -> str:
        return self.namespace.upper()


def _secret(value: SecretStr | None, file: Path | None) -> str | None:
    if value is not None:
        return value.get_secret_value()
    if file is not None:
        return file.read_text().strip()
    return None
