"""How the CLI reaches a syncgov service: address and identity, from options or SYNCGOV_* variables.

The connection options (``--address``, ``--system``, ``--token``, ``--cert``, ``--key``, ``--ca``)
are declared once, here, by :func:`connection_options`: a command that talks to a service takes a
``connection: Connection`` parameter and the decorator gives it those options on its own command
line (``syncgov policy apply FILE --address host:port`` keeps working) and builds the connection.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import grpc
import typer
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from libs.policy.durations import parse_duration
from libs.runtime.telemetry import environment_context, traced_metadata
from syncgov.common.v1 import types_pb2

EXIT_OK, EXIT_NO, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
CONTROL_PLANE_ADDRESS = "127.0.0.1:50050"
DEFAULT_SYSTEM = "ops-console"

TokenOption = Annotated[
    str | None, typer.Option("--token", envvar="SYNCGOV_TOKEN", help="Bearer token of the system to act as.")
]
CertOption = Annotated[Path | None, typer.Option("--cert", envvar="SYNCGOV_CLIENT_CERT", help="mTLS client cert.")]
KeyOption = Annotated[Path | None, typer.Option("--key", envvar="SYNCGOV_CLIENT_KEY", help="mTLS client key.")]
CaOption = Annotated[Path | None, typer.Option("--ca", envvar="SYNCGOV_CA", help="CA that signed the server cert.")]
SystemOption = Annotated[
    str,
    typer.Option("--system", envvar="SYNCGOV_SYSTEM", help="System to act as (development mode: declared identity)."),
]


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
        """The caller's identity, and the W3C trace context the CLI runs in (``TRACEPARENT``, or a current span), so
        a command run inside a traced job joins that job's trace."""
        identity = (("authorization", f"Bearer {self.token}"),) if self.token else (("x-syncgov-system", self.system),)
        return traced_metadata(identity, environment_context())


Command = TypeVar("Command", bound=Callable[..., Any])
Stub = TypeVar("Stub")


def stub(factory: Callable[[Any], Stub], channel: grpc.Channel | grpc.aio.Channel) -> Stub:
    """A generated stub on ``channel``: the *_pb2_grpc modules are untyped, this call is typed."""
    return factory(channel)


def connection_options(
    *,
    address: str = CONTROL_PLANE_ADDRESS,
    address_envvar: str = "SYNCGOV_CONTROL_PLANE_ADDR",
    peer: str = "control-plane",
    system: str | None = DEFAULT_SYSTEM,
) -> Callable[[Command], Command]:
    """Give a command the connection options and call it with ``connection=Connection(...)``.

    ``system=None`` leaves ``--system`` out (the command names the system itself and replaces
    ``connection.system``); the other options are the same on every command.
    """

    def decorate(command: Command) -> Command:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "connection"]
        added = {
            "address": (
                Annotated[str, typer.Option("--address", envvar=address_envvar, help=f"{peer} gRPC address.")],
                address,
            ),
            "system": (SystemOption, system),
            "token": (TokenOption, None),
            "cert": (CertOption, None),
            "key": (KeyOption, None),
            "ca": (CaOption, None),
        }
        if system is None:
            del added["system"]
        clash = set(added) & {p.name for p in own}
        if clash:
            raise TypeError(f"{command.__name__} declares connection option(s) itself: {sorted(clash)}")
        parameters = own + [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
            for name, (annotation, default) in added.items()
        ]

        @functools.wraps(command)
        def with_connection(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in added}
            values.setdefault("system", "")
            return command(*args, connection=Connection(**values), **kwargs)

        with_connection.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        with_connection.__annotations__ = {p.name: p.annotation for p in parameters}
        return with_connection  # type: ignore[return-value]

    return decorate


def explain_rpc_error(error: grpc.aio.AioRpcError, peer: str = "the control plane") -> tuple[str, int]:
    """A readable line and the exit code for a failed call to ``peer``."""
    code = error.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return f"cannot reach {peer}: {error.details()}", EXIT_UNREACHABLE
    return f"{code.name}: {error.details()}", EXIT_NO


def older_than(value: str | None, now: datetime) -> timestamp_pb2.Timestamp | None:
    """``--older-than 7d`` as the listing's "at or before" timestamp; None when not given; a bad duration is a usage
    error (exit 2)."""
    if not value:
        return None
    try:
        age = parse_duration(value)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--older-than") from None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(now - age)
    return stamp


def collect_pages(fetch: Callable[[Any], Any], request: Any, items: str, limit: int) -> tuple[list[Any], str]:
    """Up to ``limit`` items of a paged listing, following its page tokens (at most 100 a page); the token where it
    stopped ("" when nothing is left). ``fetch`` answers one page; ``items`` names the answer's repeated field."""
    listed: list[Any] = []
    token = ""
    while len(listed) < limit:
        request.page.CopyFrom(types_pb2.PageRequest(page_size=min(limit - len(listed), 100), page_token=token))
        answer = fetch(request)
        listed.extend(getattr(answer, items))
        token = answer.page_info.next_page_token
        if not token:
            break
    return listed, token


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo a refusal carries (its reason and metadata: system, policy revision, exception id), if any."""
    status = rpc_status.from_call(cast(grpc.Call, error))
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def right_refused(error: grpc.aio.AioRpcError, system: str, *, done: str, right: str, verb: str, hint: str) -> str:
    """Why a write was refused, for the person who tried: ``system`` (else the one the refusal names) lacks the
    policy's ``right``; "nothing was {done}", then how to go on ("{verb} through ... ({hint})")."""
    info = error_info(error)
    metadata = dict(info.metadata) if info is not None else {}
    who = metadata.get("system") or system or "this system"
    revision = metadata.get("policy_revision")
    policy = f"policy revision {revision}" if revision else "the policy in force"
    explained = (
        f"nothing was {done}: {policy} gives {who} no {right} right; {verb} through a system "
        f"the policy lists as a writer of {right} ({hint}), or change the policy"
    )
    if metadata.get("exception_id"):
        explained += f"; the refusal was raised as exception {metadata['exception_id']}"
    return explained
