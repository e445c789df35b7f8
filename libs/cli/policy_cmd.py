"""``syncgov policy validate|diff|apply|get|history|rollback|explain``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any, cast

import grpc
import typer
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rich.syntax import Syntax
from rich.table import Table

from libs.cli.client import EXIT_NO, EXIT_OK, Connection, connection_options, explain_rpc_error, stub
from libs.cli.output import make_console
from libs.policy.problems import Problem
from libs.policy.validate import check
from syncgov.controlplane.v1 import controlplane_service_pb2 as cp
from syncgov.controlplane.v1 import controlplane_service_pb2_grpc

app = typer.Typer(help="Policy as code: validate, compare, apply and explain.", no_args_is_help=True)
console = make_console()


async def _call(connection: Connection, method: str, request: Message) -> Any:
    async with connection.channel() as channel:
        control = stub(controlplane_service_pb2_grpc.ControlPlaneServiceStub, channel)
        return await getattr(control, method)(request, metadata=connection.metadata(), timeout=15)


def _run(connection: Connection, method: str, request: Message) -> Any:
    """The answer of one control-plane call; a failure is printed and ends the command with its exit code."""
    try:
        return asyncio.run(_call(connection, method, request))
    except grpc.aio.AioRpcError as error:
        message, code = explain_rpc_error(error)
        console.print(f"[red]{message}[/red]")
        _print_violations(error)
        raise typer.Exit(code) from None


def _print_violations(error: grpc.aio.AioRpcError) -> None:
    status = rpc_status.from_call(cast(grpc.Call, error))
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            _print_problems(
                [Problem(v.field.removeprefix("document_yaml:"), v.description) for v in bad.field_violations]
            )


def _print_problems(problems: list[Problem]) -> None:
    table = Table(title=f"{len(problems)} problem(s)", show_lines=False)
    table.add_column("path", style="bold")
    table.add_column("problem")
    for problem in problems:
        table.add_row(problem.path, problem.message)
    console.print(table)


def _print_diff(diff: str) -> None:
    if diff:
        console.print(Syntax(diff, "diff", theme="ansi_dark", background_color="default"))
    else:
        console.print("no differences")


@app.command()
def validate(files: Annotated[list[Path], typer.Argument(help="Policy documents to check.", exists=True)]) -> None:
    """Check documents offline; every problem is listed with its path. Exit 1 if any is invalid."""
    invalid = 0
    for file in files:
        _, problems = check(file.read_text())
        if problems:
            invalid += 1
            console.print(f"[red]{file}: invalid[/red]")
            _print_problems(problems)
        else:
            console.print(f"[green]{file}: valid[/green]")
    raise typer.Exit(EXIT_NO if invalid else EXIT_OK)


@app.command()
@connection_options()
def diff(
    file: Annotated[Path, typer.Argument(exists=True)],
    *,
    connection: Connection,
) -> None:
    """Compare a document with the revision in force."""
    answer = _run(
        connection,
        "DiffPolicy",
        cp.DiffPolicyRequest(document_yaml=file.read_text()),
    )
    console.print(f"against revision {answer.current_revision}:")
    _print_diff(answer.unified_diff)


@app.command()
@connection_options()
def apply(
    file: Annotated[Path, typer.Argument(exists=True)],
    expected_revision: Annotated[
        int | None, typer.Option(help="Revision you expect to replace; default: the one the diff is shown against.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Validate and show the diff; store nothing.")] = False,
    comment: Annotated[str, typer.Option(help="Why (kept with the revision and in the audit trail).")] = "",
    *,
    connection: Connection,
) -> None:
    """Store the document as a new revision; running services switch to it within a second."""
    text = file.read_text()
    if expected_revision is None:
        # Apply against what the operator is shown: a change stored in between is still refused.
        shown = _run(connection, "DiffPolicy", cp.DiffPolicyRequest(document_yaml=text))
        expected_revision = shown.current_revision
    answer = _run(
        connection,
        "ApplyPolicy",
        cp.ApplyPolicyRequest(
            document_yaml=text, expected_revision=expected_revision, dry_run=dry_run, comment=comment
        ),
    )
    _print_diff(answer.unified_diff)
    if dry_run:
        console.print(f"dry run: valid, would replace revision {expected_revision}; nothing stored")
    elif answer.revision.revision == expected_revision:
        console.print(f"unchanged: revision {expected_revision} stays in force")
    else:
        console.print(f"[green]applied revision {answer.revision.revision}[/green] (was {expected_revision})")


@app.command()
@connection_options()
def get(
    revision: Annotated[int, typer.Option(help="Revision to print; 0 = current.")] = 0,
    *,
    connection: Connection,
) -> None:
    """Print a stored revision's document."""
    answer = _run(connection, "GetPolicy", cp.GetPolicyRequest(revision=revision))
    console.print(f"# revision {answer.revision.revision}, applied by {answer.revision.applied_by}")
    console.print(answer.revision.document_yaml, markup=False, highlight=False)


@app.command()
@connection_options()
def history(
    limit: Annotated[int, typer.Option(help="How many revisions, newest first.")] = 20,
    *,
    connection: Connection,
) -> None:
    """List stored revisions, newest first."""
    from syncgov.common.v1 import types_pb2

    answer = _run(
        connection,
        "ListPolicyRevisions",
        cp.ListPolicyRevisionsRequest(page=types_pb2.PageRequest(page_size=limit)),
    )
    table = Table(title="policy revisions")
    for column in ("revision", "applied at", "by", "comment", "sha256"):
        table.add_column(column)
    for revision in answer.revisions:
        table.add_row(
            str(revision.revision),
            revision.applied_at.ToDatetime().isoformat(timespec="seconds") + "Z",
            revision.applied_by,
            revision.comment,
            revision.document_sha256[:12],
        )
    console.print(table)


@app.command()
@connection_options()
def rollback(
    target_revision: Annotated[int, typer.Argument(help="Revision whose document comes back.")],
    expected_revision: Annotated[int, typer.Option(help="Revision you expect to replace.")],
    comment: Annotated[str, typer.Option(help="Why.")] = "",
    *,
    connection: Connection,
) -> None:
    """Re-apply an earlier revision's document as a new revision."""
    answer = _run(
        connection,
        "RollbackPolicy",
        cp.RollbackPolicyRequest(target_revision=target_revision, expected_revision=expected_revision, comment=comment),
    )
    console.print(
        f"[green]revision {answer.revision.revision} now carries revision {target_revision}'s document[/green]"
    )


@app.command()
@connection_options()
def explain(
    object_type: Annotated[str, typer.Argument(help="e.g. purchase_order")],
    field: Annotated[str, typer.Argument(help="e.g. lines[].unit_price; empty for the object")] = "",
    *,
    connection: Connection,
) -> None:
    """Who may write a field, and which rule says so."""
    answer = _run(
        connection,
        "ExplainOwnership",
        cp.ExplainOwnershipRequest(object_type=object_type, field=field),
    )
    decision = answer.decision
    target = f"{decision.object_type}.{decision.field}" if decision.field else decision.object_type
    console.print(
        f"{target}: system of record [bold]{decision.system_of_record}[/bold]; "
        f"writers: {', '.join(decision.writers)}\n"
        f"because of [bold]{decision.rule_path}[/bold] in policy revision {decision.policy_revision}"
    )
