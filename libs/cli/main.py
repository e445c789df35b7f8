"""The ``syncgov`` command."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.table import Table

from libs.cli import (
    audit_cmd,
    demo_cmd,
    dev_cmd,
    drift_cmd,
    exceptions_cmd,
    invoices_cmd,
    policy_cmd,
    receipts_cmd,
    suppliers_cmd,
    trace_cmd,
    workflows_cmd,
)
from libs.cli.components import (
    COMPONENTS,
    DEFAULT_GRPC_PORT_BASE,
    DEFAULT_METRICS_PORT_BASE,
    existing_components,
)
from libs.cli.output import make_console, table
from libs.cli.stack import Stack, StackOptions
from libs.runtime.local_servers import ServerError
from libs.runtime.probe import health_status, reflected_services

app = typer.Typer(help="syncgov: governed sync between procurement platforms and ERP systems.", no_args_is_help=True)
app.add_typer(policy_cmd.app, name="policy")
app.add_typer(audit_cmd.app, name="audit")
app.add_typer(dev_cmd.app, name="dev")
app.add_typer(suppliers_cmd.app, name="suppliers")
app.add_typer(receipts_cmd.app, name="receipts")
app.add_typer(invoices_cmd.app, name="invoices")
app.add_typer(exceptions_cmd.app, name="exceptions")
app.add_typer(drift_cmd.app, name="drift")
app.add_typer(workflows_cmd.app, name="workflows")
app.command(name="demo", help=demo_cmd.HELP)(demo_cmd.demo)
app.command(name="trace")(trace_cmd.trace)
console = make_console()

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@app.command()
def up(
    nats_url: Annotated[
        str | None, typer.Option(envvar="SYNCGOV_NATS_URL", help="Use this NATS server instead of starting one.")
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option(envvar="SYNCGOV_REDIS_URL", help="Use this Valkey/Redis instead of starting one.")
    ] = None,
    data_dir: Annotated[Path, typer.Option(help="Where local servers keep data and services their logs.")] = Path(
        ".syncgov"
    ),
    grpc_port_base: Annotated[int, typer.Option(help="control-plane's port; the others follow (+1..+5).")] = (
        DEFAULT_GRPC_PORT_BASE
    ),
    metrics_port_base: Annotated[int, typer.Option(help="First Prometheus port; 0 turns metrics endpoints off.")] = (
        DEFAULT_METRICS_PORT_BASE
    ),
    nats_port: Annotated[int, typer.Option(help="Port of the local nats-server.")] = 4222,
    redis_port: Annotated[int, typer.Option(help="Port of the local valkey-server.")] = 6379,
    sync_always: Annotated[
        bool, typer.Option(help="fsync every JetStream write (safe); --no-sync-always trades that for speed.")
    ] = True,
    log_format: Annotated[str, typer.Option(help="Service log format: json or console.")] = "json",
    only: Annotated[list[str] | None, typer.Option(help="Start only these components (repeatable).")] = None,
) -> None:
    """Start nats-server, valkey-server and every service that exists; Ctrl-C stops them all."""
    components = existing_components()
    if only:
        unknown = set(only) - {c.name for c in components}
        if unknown:
            console.print(f"[red]unknown or not yet built component(s): {', '.join(sorted(unknown))}[/red]")
            raise typer.Exit(EXIT_USAGE)
        components = [c for c in components if c.name in only]
    options = StackOptions(
        data_dir=data_dir.resolve(),
        grpc_port_base=grpc_port_base,
        metrics_port_base=metrics_port_base or None,
        nats_url=nats_url,
        redis_url=redis_url,
        nats_port=nats_port,
        redis_port=redis_port,
        sync_always=sync_always,
        components=components,
        log_format=log_format,
    )
    stack = Stack(options)
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    exit_code = EXIT_OK
    try:
        stack.start_servers()
        stack.start_components()
        states = asyncio.run(stack.wait_until_serving())
        _print_stack(stack, states)
        if any(state != "SERVING" for state in states.values()):
            console.print("[red]not every component is serving; stopping. See the logs above.[/red]")
            exit_code = EXIT_FAILED
        else:
            console.print("[green]syncgov is up.[/green] Ctrl-C stops everything.", highlight=False)
            while not stopping:
                dead = stack.dead_child()
                if dead is not None:
                    console.print(
                        f"[red]{dead.component.name} exited with code {dead.process.returncode}; "
                        f"stopping the stack (log: {dead.log_path})[/red]"
                    )
                    exit_code = EXIT_FAILED
                    break
                time.sleep(0.2)
    except ServerError as error:
        console.print(f"[red]{error}[/red]")
        exit_code = EXIT_FAILED
    finally:
        console.print("stopping...")
        stack.stop()
        console.print("stopped.")
    raise typer.Exit(exit_code)


StackRow = tuple[str, str, str, str]  # component, where it listens, state, log file
StatusRow = tuple[str, str, str, list[str]]  # component, address, health, services listed by reflection
NOT_BUILT = "NOT BUILT YET"


def _print_stack(stack: Stack, states: dict[str, str]) -> None:
    rows: list[StackRow] = [
        ("nats-server", stack.nats_url, "external" if stack.options.nats_url else "started", ""),
        ("valkey-server", stack.redis_url, "external" if stack.options.redis_url else "started", ""),
    ]
    rows += [
        (child.component.name, child.address, states.get(child.component.name, "?"), str(child.log_path))
        for child in stack.children
    ]
    console.print(stack_table(rows))


def stack_table(rows: list[StackRow]) -> Table:
    """What ``syncgov up`` prints once the stack stands: every address and log path whole."""
    result = table("syncgov local stack", "component", "listens on", "state", "log")
    for name, address, state, log in rows:
        if state in ("SERVING", "started", "external"):
            state = f"[green]{state}[/green]" if state == "SERVING" else state
        else:
            state = f"[red]{state}[/red]"
        result.add_row(name, address, state, log)
    return result


def status_table(rows: list[StatusRow]) -> Table:
    """What ``syncgov status`` prints: every component, its address whole, its health and services."""
    result = table("syncgov components", "component", "address", "health", "services (reflection)")
    for name, address, state, services in rows:
        colour = "green" if state == "SERVING" else "dim" if state == NOT_BUILT else "red"
        result.add_row(name, address, f"[{colour}]{state}[/{colour}]", "\n".join(services))
    return result


def status_exit_code(rows: list[StatusRow]) -> int:
    """0 only when every built component serves; a component not built yet is no failure."""
    down = [row for row in rows if row[2] not in ("SERVING", NOT_BUILT)]
    return EXIT_FAILED if down or not rows else EXIT_OK


@app.command()
def status(
    grpc_port_base: Annotated[int, typer.Option(help="control-plane's port; the others follow.")] = (
        DEFAULT_GRPC_PORT_BASE
    ),
    host: Annotated[str, typer.Option(help="Where the components listen.")] = "127.0.0.1",
) -> None:
    """Ask every component for its health and, through reflection, the services it serves.

    Exit 0 when every built component is SERVING, 1 when any is down or not serving.
    """

    async def probe() -> list[StatusRow]:
        rows: list[StatusRow] = []
        for component in COMPONENTS:
            address = f"{host}:{component.grpc_port(grpc_port_base)}"
            if not component.exists():
                rows.append((component.name, address, NOT_BUILT, []))
                continue
            async with grpc.aio.insecure_channel(address) as channel:
                state = await health_status(channel)
                services = await reflected_services(channel) if state == "SERVING" else []
            rows.append((component.name, address, state, services))
        return rows

    rows = asyncio.run(probe())
    console.print(status_table(rows))
    down = [name for name, _, state, _ in rows if state not in ("SERVING", NOT_BUILT)]
    if down:
        console.print(f"[red]not serving: {', '.join(down)}[/red]")
    raise typer.Exit(status_exit_code(rows))


def main() -> None:
    app()
