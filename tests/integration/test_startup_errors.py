"""A service that cannot take its ports says so in one line and exits 2: no traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from libs.runtime.testing import unique_namespace

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port another program is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def _run_service(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCGOV_", "OTEL_"))}
    return subprocess.run(
        [sys.executable, "-m", "services.po_publication"],
        env={**base, "SYNCGOV_CONNECT_ATTEMPTS": "2", "SYNCGOV_NAMESPACE": unique_namespace(), **env},
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )


def _the_one_error(result: subprocess.CompletedProcess[str], stderr_lines: int = 0) -> dict[str, str]:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    errors = [json.loads(line) for line in result.stdout.splitlines() if '"level": "error"' in line]
    assert len(errors) == 1, output
    assert len(result.stderr.splitlines()) == stderr_lines, output
    return errors[0]


def test_a_taken_metrics_port_is_one_line_and_exit_2(held_port: int) -> None:
    # No NATS or Valkey is needed: the metrics port is taken before anything is connected.
    result = _run_service({"SYNCGOV_METRICS_PORT": str(held_port), "SYNCGOV_NATS_URL": "nats://127.0.0.1:1"})
    assert result.returncode == 2, result.stdout + result.stderr
    error = _the_one_error(result)
    assert f"127.0.0.1:{held_port}" in error["msg"]
    assert "SYNCGOV_METRICS_PORT" in error["msg"]
    assert "in use" in error["msg"]


def test_a_taken_grpc_port_is_one_line_and_exit_2(held_port: int, nats_server, valkey_server) -> None:
    result = _run_service(
        {
            "SYNCGOV_GRPC_PORT": str(held_port),
            "SYNCGOV_NATS_URL": nats_server.url,
            "SYNCGOV_REDIS_URL": valkey_server.url,
        }
    )
    assert result.returncode == 2, result.stdout + result.stderr
    # gRPC's core library logs the bind failure itself, as one line on stderr.
    error = _the_one_error(result, stderr_lines=1)
    assert f"127.0.0.1:{held_port}" in error["msg"]
    assert "SYNCGOV_GRPC_PORT" in error["msg"]
