"""How the CLI reaches a control plane: address and identity, from options or SYNCGOV_* variables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import grpc
import typer

EXIT_OK, EXIT_NO, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

AddressOption = Annotated[
    str, typer.Option("--address", envvar="SYNCGOV_CONTROL_PLANE_ADDR", help="control-plane gRPC address.")
]
SystemOption = Annotated[
    str,
    typer.Option("--system", envvar="SYNCGOV_SYSTEM", help="System to act as (development mode: declared identity)."),
]
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar="SYNCGOV_TOKEN", help="Bearer token of the system to act as.")
]
CertOption = Annotated[Path | None, typer.Option("--cert", envvar="SYNCGOV_CLIENT_CERT", help="mTLS client cert.")]
KeyOption = Annotated[Path | None, typer.Option("--key", envvar="SYNCGOV_CLIENT_KEY", help="mTLS client key.")]
CaOption = Annotated[Path | None, typer.Option("--ca", envvar="SYNCGOV_CA", help="CA that signed the server cert.")]


@dataclass(frozen=True)
class Connection:
    address: str
    system: str
    token: str | None = None
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    def channel(self) -> grpc.aio.Channel:
        if self.ca is None:
            return grpc.aio.insecure_channel(self.address)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )
        return grpc.aio.secure_channel(self.address, credentials)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self.token:
            return (("authorization", f"Bearer {self.token}"),)
        return (("x-syncgov-system", self.system),)


def explain_rpc_error(error: grpc.aio.AioRpcError) -> tuple[str, int]:
    """A readable line and the exit code for a failed call."""
    code = error.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return f"cannot reach the control plane: {error.details()}", EXIT_UNREACHABLE
    return f"{code.name}: {error.details()}", EXIT_NO
