"""`syncgov up` as a user runs it: real processes, health SERVING, reflection, clean stop on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from libs.cli.components import existing_components
from libs.runtime.local_servers import free_port, free_port_range
from libs.runtime.probe import health_status, reflected_services

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _wait_for_line(process: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line:
            seen.append(line)
            if needle in line:
                return seen
        elif process.poll() is not None:
            break
        else:
            time.sleep(0.05)
    raise AssertionError(f"{needle!r} not printed; output so far:\n{''.join(seen)}")


@pytest.fixture
def stack(tmp_path: Path):
    base = free_port_range(6)
    po_port = base + 2
    metrics_po_port = free_port_range(6) + 2
    args = [
        sys.executable,
        "-m",
        "libs.cli",
        "up",
        "--data-dir",
        str(tmp_path / "stack"),
        "--grpc-port-base",
        str(po_port - 2),
        "--metrics-port-base",
        str(metrics_po_port - 2),
        "--nats-port",
        str(free_port()),
        "--redis-port",
        str(free_port()),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCGOV_")}
    env["COLUMNS"] = "200"
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        output = _wait_for_line(process, "syncgov is up", timeout=60)
        yield process, po_port, metrics_po_port, output, tmp_path / "stack"
    finally:
        if process.poll() is None:  # stop it as a user would, so it stops what it started
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def _probe(address: str, service: str = "") -> tuple[str, list[str]]:
    async with grpc.aio.insecure_channel(address) as channel:
        return await health_status(channel, service), await reflected_services(channel)


def test_up_serves_every_existing_service_and_stops_cleanly_on_ctrl_c(stack):
    process, po_port, metrics_port, output, data_dir = stack
    components = existing_components()
    assert "po-publication" in [c.name for c in components]
    printed = "".join(output)
    for component in components:
        address = f"127.0.0.1:{component.grpc_port(po_port - 2)}"
        assert address in printed
        health, services = asyncio.run(_probe(address))
        assert health == "SERVING", component.name
        assert "grpc.health.v1.Health" in services
        assert any(name.startswith("syncgov.") for name in services), component.name
    health, _ = asyncio.run(_probe(f"127.0.0.1:{po_port}", "syncgov.po.v1.PurchaseOrderService"))
    assert health == "SERVING"
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        assert response.status == 200

    children = subprocess.run(
        ["pgrep", "-f", str(data_dir)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert len(children) >= 2, "nats-server and valkey-server run with the stack's data folder"

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    remaining = process.stdout.read() if process.stdout else ""
    assert "stopped." in remaining
    still_running = subprocess.run(["pgrep", "-f", str(data_dir)], capture_output=True, text=True, check=False)
    assert still_running.stdout.strip() == "", "every server the stack started is gone"
    log = (data_dir / "logs" / "po-publication.log").read_text()
    assert '"msg": "stopped"' in log


def test_up_refuses_an_unknown_component(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "libs.cli", "up", "--only", "billing", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "billing" in result.stdout


def test_demo_scenario_runs_clean_against_the_stack(stack):
    _, po_port, _, _, _ = stack
    result = subprocess.run(
        [sys.executable, "-m", "libs.cli", "demo", "--grpc-port-base", str(po_port - 2)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={**os.environ, "COLUMNS": "220"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    summary = [line for line in result.stdout.splitlines() if "steps as expected" in line]
    assert summary
    done, _, total = summary[0].split()[:3]
    assert done == total
    assert int(total) >= 10
